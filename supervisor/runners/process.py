"""The process runner: one child process, in a process group of its own, and its output.

`run_process` keeps the runner contract of `supervisor.runners`. The child leads a new
process group (pgid == pid), so a stop reaches everything it spawned; its stdin is
/dev/null and its stdout and stderr are relayed line by line to the log, tagged with the
agent's id. With ``ready = "notify"`` it also gets ``$NOTIFY_SOCKET`` (see
`supervisor.runners.notify`).

Spawning calls `subprocess.Popen` right in the trio loop, without trio's thread hop
(`trio.lowlevel.open_process`). Popen takes the vfork path here (no ``preexec_fn``; the
process group is set with ``process_group=0``), and CPython 3.11 holds the GIL across
vfork until the child has exec'd, so a worker thread could not spare the loop that time
anyway: it would only add a thread hand-off to every spawn. Measured on the 2-core dev
machine, spawning 300 ``sleep`` children back to back: Popen with our pipes and pidfd
0.75 ms per child, the same through a thread 1.0 ms, trio's open_process 0.9 ms, and a
bare ``os.posix_spawn`` 0.62 ms (the floor); `run_process` end to end (1000 agents, to
the last ``launched``) 1.0 ms. The exit is awaited on a pidfd, so waiting costs nothing
while the child runs.

Ending, in every case (exit, stop, error), in this order: SIGKILL to the group while the
exited leader is still an unreaped zombie (its pid, and so the group id, cannot have been
reused yet), then reap the leader, then let the output pipes drain to end of file (a
short, bounded wait) and flush a partial last line. Only then is the group unregistered
from the `Keeper`.
"""

from __future__ import annotations

import codecs
import errno
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, ExitStack, asynccontextmanager
from typing import TypeVarTuple

import trio

from supervisor.health.sdwatchdog import relay_watchdog, watchdog_command, watchdog_environment
from supervisor.keeper import MARK_VARIABLE, Keeper
from supervisor.logs import LineSink, log, relay_lines
from supervisor.manifest import AgentSpec
from supervisor.output import LINE_LIMIT, cut
from supervisor.runners import Hooks, Outcome
from supervisor.runners.notify import NotifySocket, open_notify_socket

# Output is read in chunks this large; a line longer than LINE_LIMIT characters is
# relayed in pieces of LINE_LIMIT, so a child that never writes a newline costs bounded
# memory (docs/operations.md, "A flood of output").
READ_SIZE = 65536
# After the group is SIGKILLed its pipes reach EOF at once, unless a process that left
# the group (setsid) still holds them; we stop waiting for that after this long.
DRAIN_TIMEOUT = 1.0
# SIGKILL cannot be ignored, but a process stuck in the kernel (D state) can delay its
# death; the shielded cleanup must stay bounded all the same.
KILL_TIMEOUT = 5.0

Ts = TypeVarTuple("Ts")


async def run_process(spec: AgentSpec, hooks: Hooks, *, keeper: Keeper | None = None) -> Outcome:
    """Run ``spec.command`` once and return how it ended.

    Args:
      spec: a ``kind = "process"`` agent.
      hooks: told ``launched(pid)`` after the spawn, ``ready()`` at once or on
        ``READY=1``, and ``status(text)`` on each ``STATUS=``.
      keeper: if given, the group is registered with it while it exists, so it dies
        even if the supervisor is SIGKILLed.

    Returns:
      ``Outcome(code=…)`` or ``Outcome(signal=…)`` once the child exited by itself
      (what was left of its group has been killed), or ``Outcome(start_failed=True,
      error=…)`` if it could not be started; never raises for what the child does.

    Raises:
      trio.Cancelled: the stop. Shielded and bounded, the group first gets
        ``spec.stop_signal`` (and SIGCONT, in case it is stopped), then up to
        ``spec.stop_timeout`` seconds to exit, then SIGKILL; the leader is reaped and
        its output drained before Cancelled propagates.
    """
    if not spec.command:
        return Outcome(start_failed=True, error="command is empty")
    async with AsyncExitStack() as stack:
        try:
            notify = await stack.enter_async_context(_maybe_notify_socket(spec))
        except OSError as exc:
            return Outcome(
                start_failed=True,
                error=_notify_socket_error(exc, spec),
                short_of_resources=exc.errno in _SHORT_OF_FDS,
            )
        try:
            env = _environment(spec, notify, keeper)
            child = _Child.spawn(spec, env, watchdog_command(spec, env))
        except (OSError, ValueError) as exc:
            short = isinstance(exc, OSError) and exc.errno in _SHORT_OF_FDS
            return Outcome(
                start_failed=True, error=_start_error(exc, spec), short_of_resources=short
            )
        if keeper is not None:
            keeper.register(child.pid)
        try:
            return await _supervise(spec, hooks, child, notify)
        finally:
            child.close()
            if keeper is not None:
                keeper.unregister(child.pid)


async def _supervise(
    spec: AgentSpec, hooks: Hooks, child: _Child, notify: NotifySocket | None
) -> Outcome:
    """Watch `child` until it exits or we are cancelled; end it either way.

    The helper tasks (output relays, notification relay) run shielded and are stopped
    explicitly: a stopping agent's output is still relayed, and no helper ever raises
    Cancelled into the nursery, so a stop leaves as the bare `trio.Cancelled` it came
    in as rather than wrapped in an exception group.
    """
    relays = [
        _Relay(spec.id, "stdout", child.stdout_fd, hooks.output),
        _Relay(spec.id, "stderr", child.stderr_fd, hooks.output),
    ]
    stop_request: trio.Cancelled | None = None
    async with trio.open_nursery() as nursery:
        helpers = [_start_shielded(nursery, line_relay.run) for line_relay in relays]
        notifications = trio.CancelScope()  # a stand-in, replaced for notify agents
        try:
            hooks.launched(child.pid)
            if spec.ready != "notify":
                hooks.ready()
            if notify is not None:
                notifications = _start_shielded(nursery, _relay_notifications, notify, hooks)
            await child.wait_exited()
        except trio.Cancelled as cancelled:
            stop_request = cancelled
            notifications.cancel()  # a stopping agent is not becoming ready
            with trio.CancelScope(shield=True):
                await _stop(spec, child, relays)
        finally:
            with trio.CancelScope(shield=True):
                await _finish(child, relays)
            for scope in [*helpers, notifications]:
                scope.cancel()
    if stop_request is not None:
        raise stop_request
    return child.outcome


def _start_shielded(
    nursery: trio.Nursery, async_fn: Callable[[*Ts], Awaitable[object]], *args: *Ts
) -> trio.CancelScope:
    """Start ``async_fn(*args)`` in `nursery`, shielded: only the scope returned stops it."""
    scope = trio.CancelScope(shield=True)

    async def run() -> None:
        with scope:
            await async_fn(*args)

    nursery.start_soon(run)
    return scope


async def _stop(spec: AgentSpec, child: _Child, relays: list[_Relay]) -> None:
    """Ask the group to stop and give it ``stop_timeout`` to finish (leader and output)."""
    child.signal_group(spec.stop_signal)
    child.signal_group(signal.SIGCONT)
    with trio.move_on_after(spec.stop_timeout) as grace:
        await child.wait_exited()
        for line_relay in relays:
            await line_relay.eof.wait()
    if grace.cancelled_caught:
        log.warning(
            "%s: still running %.1fs after %s; sending SIGKILL to its group",
            spec.id,
            spec.stop_timeout,
            spec.stop_signal.name,
        )


async def _finish(child: _Child, relays: list[_Relay]) -> None:
    """Kill what is left of the group, reap the leader, drain the output. Bounded."""
    child.signal_group(signal.SIGKILL)
    with trio.move_on_after(KILL_TIMEOUT):
        await child.wait_exited()
        child.reap()
    with trio.move_on_after(DRAIN_TIMEOUT):
        for line_relay in relays:
            await line_relay.eof.wait()


async def _relay_notifications(notify: NotifySocket, hooks: Hooks) -> None:
    """Forward ``STATUS=`` to hooks.status, the first ``READY=1`` to hooks.ready, and
    ``WATCHDOG=`` (see `supervisor.health.sdwatchdog`)."""
    ready = False
    while True:
        message = await notify.receive()
        if message.status is not None:
            hooks.status(message.status)
        if message.ready and not ready:
            ready = True
            hooks.ready()
        relay_watchdog(message.fields, hooks)


@asynccontextmanager
async def _maybe_notify_socket(spec: AgentSpec) -> AsyncIterator[NotifySocket | None]:
    if spec.ready != "notify" and spec.watchdog <= 0:
        yield None
        return
    async with open_notify_socket(spec.id) as notify:
        yield notify


def _environment(
    spec: AgentSpec, notify: NotifySocket | None, keeper: Keeper | None = None
) -> dict[bytes, bytes]:
    """Our environment, plus the agent's, plus its own ``$NOTIFY_SOCKET`` if any, plus
    the keeper's mark (which lets the keeper find a child forked just before it was
    registered). As bytes: copying `os.environb` skips decoding every variable and Popen
    encoding it back, on every spawn."""
    env = dict(os.environb)
    # If we run under systemd ourselves, our NOTIFY_SOCKET is not the agent's to use;
    # and the API token is the operator's, not every agent's (an agent's own env may
    # still set it).
    env.pop(b"NOTIFY_SOCKET", None)
    env.pop(b"SUPERVISOR_TOKEN", None)
    env.update((os.fsencode(k), os.fsencode(v)) for k, v in spec.env.items())
    if notify is not None:
        env[b"NOTIFY_SOCKET"] = os.fsencode(notify.path)
        env.update(watchdog_environment(spec))
    if keeper is not None:
        env[MARK_VARIABLE.encode()] = keeper.mark.encode()
    return env


_SHORT_OF_FDS = (errno.EMFILE, errno.ENFILE)


def _notify_socket_error(exc: OSError, spec: AgentSpec) -> str:
    if exc.errno in _SHORT_OF_FDS:
        return _start_error(exc, spec)
    where = f" ({exc.filename})" if exc.filename else ""
    return (
        f"cannot create a $NOTIFY_SOCKET: {exc.strerror or exc}{where}; "
        "set TMPDIR to a writable folder"
    )


def _start_error(exc: OSError | ValueError, spec: AgentSpec) -> str:
    """Why the spawn failed, in words a user can act on."""
    assert spec.command
    program, cwd = spec.command[0], str(spec.cwd)
    if isinstance(exc, ValueError):
        return f"cannot start {program!r}: {exc}"
    if exc.errno in _SHORT_OF_FDS:
        return (
            f"cannot start {program!r}: the supervisor has too many open files "
            "(raise its limit: ulimit -n, LimitNOFILE=)"
        )
    if exc.filename == cwd and program != cwd:
        if isinstance(exc, FileNotFoundError):
            return f"cwd does not exist: {cwd!r}"
        if isinstance(exc, NotADirectoryError):
            return f"cwd is not a directory: {cwd!r}"
        return f"cannot enter cwd {cwd!r}: {exc.strerror}"
    if isinstance(exc, FileNotFoundError):
        if "/" in program and (spec.cwd / program).exists():
            return f"cannot run {program!r}: its #! interpreter was not found"
        return f"command not found: {program!r}"
    if isinstance(exc, PermissionError):
        if (spec.cwd / program).is_dir():
            return f"permission denied: {program!r} is a directory"
        return f"permission denied: {program!r} is not executable"
    if exc.errno == errno.ENOEXEC:
        return f"cannot run {program!r}: not an executable format (a script needs a #! line)"
    return f"cannot start {program!r}: {exc.strerror}"


class _Child:
    """A spawned group leader: its Popen, a pidfd to await its exit, its output pipes."""

    def __init__(
        self, popen: subprocess.Popen[bytes], pidfd: int, stdout_fd: int, stderr_fd: int
    ) -> None:
        self._popen = popen
        self.pid = popen.pid
        self._pidfd = pidfd
        self.stdout_fd = stdout_fd
        self.stderr_fd = stderr_fd
        self.outcome = Outcome(error="the process was not reaped")

    @classmethod
    def spawn(cls, spec: AgentSpec, env: dict[bytes, bytes], command: list[str]) -> _Child:
        """Start the child in a new process group. Raises OSError/ValueError if it cannot.

        On failure nothing is left behind: no descriptor, and no child (one spawned
        before a later step failed, say pidfd_open hitting the fd limit, is killed).
        """
        assert spec.command
        # Like trio's open_process: the child's pipe ends are always closed here (it
        # has its copies, and ours would keep the pipes from reaching EOF); ours only
        # if the spawn fails.
        with ExitStack() as always, ExitStack() as on_failure:
            stdout_r, stdout_w = os.pipe()
            on_failure.callback(os.close, stdout_r)
            always.callback(os.close, stdout_w)
            stderr_r, stderr_w = os.pipe()
            on_failure.callback(os.close, stderr_r)
            always.callback(os.close, stderr_w)
            popen = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=stdout_w,
                stderr=stderr_w,
                cwd=str(spec.cwd),
                env=env,
                process_group=0,
            )
            on_failure.callback(_kill_now, popen)
            # pidfd_open works on a zombie too, so a child that already exited is fine.
            pidfd = os.pidfd_open(popen.pid)
            on_failure.pop_all()
        return cls(popen, pidfd, stdout_r, stderr_r)

    async def wait_exited(self) -> None:
        """Return once the leader has exited (it stays a zombie until `reap`)."""
        await trio.lowlevel.wait_readable(self._pidfd)

    def signal_group(self, sig: int) -> None:
        """Send `sig` to the whole group. Only valid before `reap` (see module docstring)."""
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass

    def reap(self) -> None:
        """Collect the exited leader's status into `outcome`. Never blocks once exited."""
        try:
            # By pidfd, not pid: immune to pid reuse, and it fails loudly (ECHILD) rather
            # than reporting 0 if someone else's waitpid(-1) took the status first.
            info = os.waitid(os.P_PIDFD, self._pidfd, os.WEXITED)
        except ChildProcessError:
            self.outcome = Outcome(error="exit status lost: the process was reaped elsewhere")
            self._popen.returncode = 0
            return
        assert info is not None
        if info.si_code == os.CLD_EXITED:
            self.outcome = Outcome(code=info.si_status)
            self._popen.returncode = info.si_status
        else:
            self.outcome = Outcome(signal=info.si_status)
            self._popen.returncode = -info.si_status

    def close(self) -> None:
        """Release the pidfd. The pipes belong to their `_Relay`s.

        A leader never reaped (stuck in the kernel past KILL_TIMEOUT) is left to Popen,
        which reaps it on a later spawn.
        """
        trio.lowlevel.notify_closing(self._pidfd)
        os.close(self._pidfd)


def _kill_now(popen: subprocess.Popen[bytes]) -> None:
    """Undo a spawn: SIGKILL the new group and reap its leader (dead within a moment)."""
    os.killpg(popen.pid, signal.SIGKILL)
    popen.wait()


class _Relay:
    """Relays one output pipe, line by line, to the agent's recent output and stdout.

    `run` returns at EOF (setting `eof`) or when cancelled; either way it relays every
    line already read, then a partial last line, and closes the pipe. It reads the next
    chunk only once the last one is relayed, so a child that outpaces us blocks on its
    full pipe (as on a slow terminal), and what we hold per pipe is bounded: one chunk
    of READ_SIZE bytes and a partial line under LINE_LIMIT characters. Writing to our
    stdout never waits: lines that do not fit its bounded queue are dropped and counted
    (`supervisor.logs`). Checkpoints between reads and every LINES_PER_STEP lines
    written through `logging`, so a chatty child cannot hog the loop.
    """

    def __init__(self, agent_id: str, stream: str, fd: int, sink: LineSink) -> None:
        self._agent_id = agent_id
        self._stream_name = stream
        self._stream = trio.lowlevel.FdStream(fd)
        self._sink = sink
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._partial = ""
        self.eof = trio.Event()

    async def run(self) -> None:
        try:
            while chunk := await self._stream.receive_some(READ_SIZE):
                await self._deliver(self._split(self._decoder.decode(chunk)))
            self.eof.set()
        finally:
            last = self._partial + self._decoder.decode(b"", final=True)
            if last:
                self._partial = ""
                with trio.CancelScope(shield=True):
                    await self._deliver(cut(last))
            self._stream.close()

    def _split(self, text: str) -> list[str]:
        lines = (self._partial + text).split("\n")
        partial = lines.pop()
        if lines and max(map(len, lines)) > LINE_LIMIT:
            lines = [piece for line in lines for piece in cut(line)]
        while len(partial) >= LINE_LIMIT:
            lines.append(partial[:LINE_LIMIT])
            partial = partial[LINE_LIMIT:]
        self._partial = partial
        return lines

    async def _deliver(self, lines: list[str]) -> None:
        if lines:
            self._sink(self._stream_name, lines)
            await relay_lines(self._agent_id, self._stream_name, lines)
