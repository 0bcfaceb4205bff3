"""How one agent kind is started, watched and stopped.

The contract every runner keeps (the slot relies on it):

- ``await run_agent(spec, hooks)`` starts the agent once and returns an `Outcome` when
  it ends by itself: a process exited, an async function returned or raised, or the
  start could not happen at all (``start_failed=True`` with a reason a user can act on).
  A runner never raises for anything the agent does.
- It calls ``hooks.launched(pid)`` once the agent is launched (``pid`` is None in-process)
  and ``hooks.ready()`` when it is ready: at once for ``ready = "immediate"``, else when
  the agent says so (``ctx.ready()`` or ``READY=1`` on ``$NOTIFY_SOCKET``).
- It hands what the agent prints or logs to ``hooks.output(stream, lines)``, in batches.
- It passes on what the agent says about itself (sd_notify, see docs/agents.md):
  ``status(text)``, ``stopping()``, ``reloading()``, ``extend_timeout(seconds)``,
  ``heartbeat()``, and ``fail(reason)`` when the agent asks to be failed (or a health
  check decides so: the slot then ends the run as failed, stopping the agent).
- Before a requested stop cancels it, the slot calls the callback the runner registered
  with ``hooks.on_stop(callback)`` (an in-process agent's ``ctx.stopping`` is set so).
- Cancelling it stops the agent: for a process, `stop_signal` to its group, up to
  `stop_timeout`, then SIGKILL to the group and reap; in-process, the agent is cancelled
  and its cleanup gets up to `stop_timeout`. That cleanup is shielded and bounded; a
  process runner then reports how the process ended with ``hooks.stopped(outcome)``
  (``killed=True`` if it needed SIGKILL), and `trio.Cancelled` propagates. After it returns or raises, nothing of it is left.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from supervisor.core.outcome import Outcome
from supervisor.manifest import AgentSpec

__all__ = ["Hooks", "Outcome", "Runner"]


class Hooks(Protocol):
    """What a runner reports to its slot. Sync, never blocking."""

    def may_spawn(self) -> str | None:
        """None if the run may begin now, else why not (the placement's `may_start`: a
        cluster lease past its deadline). Asked as the very last step before the spawn,
        after every await; a refused run starts nothing and returns a failed start."""

    def launched(self, pid: int | None) -> None: ...

    def ready(self) -> None: ...

    def status(self, text: str) -> None: ...

    def stopping(self) -> None:
        """The agent is shutting down by itself (``STOPPING=1``): ``stopping``, not ready."""

    def reloading(self) -> None:
        """The agent is reloading (``RELOADING=1``): not ready until its next `ready()`."""

    def extend_timeout(self, seconds: float) -> None:
        """The start under way may take `seconds` more from now (``EXTEND_TIMEOUT_USEC=``).

        (A stop under way is the runner's own to extend.)"""

    def stopped(self, outcome: Outcome) -> None:
        """A stop ended the run, this way (its code or signal; ``killed``)."""

    def on_stop(self, callback: Callable[[], None]) -> None:
        """Call `callback` (sync) when a stop is requested, just before the cancellation."""

    def output(self, stream: str, lines: Sequence[str]) -> None:
        """Lines the agent printed ("stdout", "stderr") or logged with ``ctx.log`` ("log")."""

    def heartbeat(self) -> None:
        """The agent is alive (``ctx.heartbeat()``, ``WATCHDOG=1``): feeds its `watchdog`."""

    def fail(self, reason: str) -> None:
        """End this run now as failed with `reason` (``WATCHDOG=trigger``, a liveness
        probe): the agent is stopped as on a stop, then the restart policy decides."""


class Runner(Protocol):
    async def __call__(self, spec: AgentSpec, hooks: Hooks) -> Outcome: ...
