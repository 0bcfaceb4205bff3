"""The quick spawn of a process agent's leader: ``os.posix_spawn`` (docs/operations.md,
"How agents are spawned").

`subprocess.Popen` runs Python between its fork and the exec (argument handling, the error
pipe), closes every descriptor in the child one by one (a supervisor of 500 agents holds
~1,500) and searches ``PATH`` in the child at every spawn: ~0.5 ms of each spawn, over
1 ms in a busy supervisor, and a restart's largest share (docs/performance.md). glibc's
``posix_spawn`` is a vfork and an exec with nothing in between but the file actions; the
descriptors are closed by the exec itself (all of ours are close-on-exec, see
`_close_on_exec`), and the program's path is found once per command and ``PATH``. A spawn
alone (a restart) is made from the spawner thread, whose descriptor table holds three
(`supervisor.runners.spawner`): the exec then has none of ours to close.

It does what `supervisor.runners.launch.Child.spawn` asks of Popen: stdin /dev/null,
stdout and stderr to the pipes, a new process group, SIGPIPE and SIGXFSZ back to their
defaults (Popen's ``restore_signals``), the signal mask inherited. Python 3.11's
posix_spawn cannot change the child's user, groups or directory, so an agent with a
``user`` or ``group``, or a ``cwd`` other than the supervisor's, is spawned by Popen, and
so is any spawn that fails here: Popen then tries again, and a program that cannot be run
fails with Popen's errors and so with the same messages (`launch.start_error`).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping

from supervisor.runners import spawner

# What Popen's restore_signals resets in the child: Python ignores SIGPIPE and SIGXFSZ
# (inherited across an exec as ignored), an agent expects their default.
_DEFAULTS = (signal.SIGPIPE, signal.SIGXFSZ)
_FOUND_MAX = 4096  # programs found, kept (by command name and PATH)
_found: dict[tuple[str, bytes | None], str] = {}
_swept = False  # whether every descriptor we inherited is close-on-exec


def spawn(
    command: list[str], env: Mapping[bytes, bytes], cwd: str, stdout: int, stderr: int
) -> int | None:
    """Spawn `command` leading a new process group, stdin /dev/null, its stdout and stderr
    to the descriptors given; its pid. None if it cannot be done this way or failed: then
    Popen is to try (and fail for the reason it gives)."""
    if stdout < 3 or stderr < 3 or cwd != _cwd():
        return None
    program = command[0]
    key = (program, env.get(b"PATH"))
    path = _found.get(key) or _find(program, env)
    if path is None:
        return None
    if not _swept:
        _close_on_exec()
    try:
        pid = spawner.spawn(path, command, env, stdout, stderr, _posix_spawn)
    except OSError:  # gone, or never runnable: Popen looks again, and says why
        _found.pop(key, None)
        return None
    if key not in _found:
        if len(_found) >= _FOUND_MAX:
            _found.clear()
        _found[key] = path
    return pid


def _cwd() -> str | None:
    try:
        return os.getcwd()
    except OSError:  # ours was removed: only Popen can give the agent its own
        return None


def _find(program: str, env: Mapping[bytes, bytes]) -> str | None:
    """Where `program` is, searched as Popen searches (the child's ``PATH``): the first
    executable regular file. A name with a slash is itself (relative to our cwd, which is
    the agent's here)."""
    if "/" in program:
        return program
    try:
        dirs = os.get_exec_path(env)  # type: ignore[arg-type]  # bytes keys are fine
    except ValueError:  # PATH given as both str and bytes: not ours to sort out
        return None
    for folder in dirs:
        path = os.path.join(folder, program)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def _close_on_exec() -> None:
    """Make every descriptor we hold, but 0-2, close-on-exec. Python makes its own so
    (PEP 446) and the supervisor makes none inheritable, so this is only for those we
    were started with: an agent must not get them (Popen's ``close_fds`` closes them).
    Once per process, at its first posix_spawn."""
    global _swept
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2:
            try:
                if os.get_inheritable(fd):
                    os.set_inheritable(fd, False)
            except OSError:  # the listing's own descriptor, closed by now
                pass
    _swept = True


def _posix_spawn(
    path: str,
    command: list[str],
    env: Mapping[bytes, bytes],
    stdout: int,
    stderr: int,
    mask: spawner.SignalSet | None,
) -> int:
    """The spawn itself; `mask`: the child's signal mask, if not the caller's."""
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDWR, 0),
        (os.POSIX_SPAWN_DUP2, stdout, 1),
        (os.POSIX_SPAWN_DUP2, stderr, 2),
    ]
    if mask is None:
        return os.posix_spawn(
            path, command, env, file_actions=actions, setpgroup=0, setsigdef=_DEFAULTS
        )
    return os.posix_spawn(
        path,
        command,
        env,
        file_actions=actions,
        setpgroup=0,
        setsigdef=_DEFAULTS,
        setsigmask=mask,
    )
