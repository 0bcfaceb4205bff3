"""The systemd watchdog protocol for process agents: what a child with ``watchdog = N``
finds in its environment, as systemd sets it (``sd_watchdog_enabled(3)``).

- ``WATCHDOG_USEC``: N in microseconds; the agent should send ``WATCHDOG=1`` to
  ``$NOTIFY_SOCKET`` at least that often (half of it is the usual choice).
- ``WATCHDOG_PID``: the pid of the agent's main process. libsystemd's
  ``sd_watchdog_enabled()`` answers "disabled" in any other process, so it must be the
  child's own pid, which is only known once it exists: the child is started as
  ``/bin/sh -c 'WATCHDOG_PID=$$; export WATCHDOG_PID; exec "$@"' sh COMMAND...``, and
  the shell execs the command in the same process (one exec more, for watchdog agents
  only). A command that cannot be found is spawned as it is, so its start fails with the
  usual message, not with a shell's exit 127.
"""

from __future__ import annotations

import os
import shutil

from supervisor.manifest import AgentSpec
from supervisor.runners import Hooks

_SHELL = "/bin/sh"
_EXPORT_PID = 'WATCHDOG_PID=$$; export WATCHDOG_PID; exec "$@"'


def watchdog_environment(spec: AgentSpec) -> dict[bytes, bytes]:
    """The variables a watchdog agent gets (none without a watchdog)."""
    if spec.watchdog <= 0:
        return {}
    return {b"WATCHDOG_USEC": str(max(1, round(spec.watchdog * 1e6))).encode()}


def watchdog_command(spec: AgentSpec, env: dict[bytes, bytes]) -> list[str]:
    """The command to spawn for `spec`: its own, or wrapped to export ``WATCHDOG_PID``."""
    assert spec.command
    command = list(spec.command)
    if spec.watchdog <= 0 or not os.access(_SHELL, os.X_OK):
        return command
    program = command[0]
    if "/" in program:
        found = os.access(os.path.join(spec.cwd, program), os.X_OK)
    else:
        path = env.get(b"PATH", os.defpath.encode()).decode(errors="replace")
        found = shutil.which(program, path=path) is not None
    if not found:
        return command
    return [_SHELL, "-c", _EXPORT_PID, "sh", *command]


def relay_watchdog(fields: dict[str, str], hooks: Hooks) -> None:
    """Act on a notification's ``WATCHDOG=``: ``1`` is a heartbeat, ``trigger`` a failure."""
    watchdog = fields.get("WATCHDOG")
    if watchdog == "1":
        hooks.heartbeat()
    elif watchdog == "trigger":
        hooks.fail("watchdog: the agent sent WATCHDOG=trigger")
