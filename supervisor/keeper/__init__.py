"""The no-orphans keeper: agents' process groups die with the supervisor, even by SIGKILL.

A supervisor killed with SIGKILL runs no cleanup, and its agents, each in a process group
of its own, would live on as orphans. So the supervisor starts one tiny keeper process
(its own session, deaf to SIGTERM, SIGINT and SIGHUP) and keeps the write end of a pipe
whose read end is the keeper's stdin. The supervisor writes ``+PGID`` when a group is
born and ``-PGID`` once it is gone (sent with the next line: see `Keeper.unregister`).
When the pipe reaches end of file, which the kernel
guarantees however the supervisor dies, the keeper SIGKILLs every group still
registered and exits. ``q`` asks it to exit without killing anything (a graceful
shutdown has already stopped every group).

A child forked in the instant before its ``+PGID`` line is written (a supervisor killed
in the middle of a burst of starts) would escape that, so every agent also carries
``SUPERVISOR_KEEPER_MARK=<this keeper's mark>`` in its environment, and the keeper, once
it has killed the registered groups, SIGKILLs every process whose environment holds the
mark (rescanning until nothing is found, for children caught between fork and exec).
That also catches descendants that left their group with ``setsid``, unless they
cleared their environment.

    keeper = Keeper.start()          # once, at startup
    keeper.register(pid)             # the runner, right after spawning a group leader
    keeper.unregister(pid)           # the runner, once the group is gone
    keeper.close()                   # at graceful exit

Writes are a few bytes to a non-blocking pipe, far below PIPE_BUF and therefore atomic,
so the trio loop never waits on the keeper. If the keeper falls behind and the pipe is
full, lines wait in memory and go out with the next write.

The keeper is ``/bin/sh supervisor/keeper/keeper.sh`` (about 1 MiB of memory), or, where
there is no ``/bin/sh`` or ``grep``, ``python -I -S supervisor/keeper/program.py`` (about
9 MiB): the same protocol and the same guarantees (see those files). A group is killed
only while its leader is provably the process registered: ``+PGID BY`` says the leader
had started by BY (clock ticks of its start time's clock, read right after the spawn,
while the leader is our unreaped child and its pid cannot be anyone else's), so a
process that got the number later started after BY; the Python program holds a pidfd on
the leader instead. It starts once.
Under PID 1 in a container the kernel already kills everything when PID 1 dies, so the
caller may skip it there.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from supervisor.keeper.program import MARK_VARIABLE
from supervisor.logs import log

__all__ = ["MARK_VARIABLE", "PROGRAM", "Keeper"]

PROGRAM = Path(__file__).with_name("program.py")
SHELL_PROGRAM = Path(__file__).with_name("keeper.sh")
SHELL = "/bin/sh"
_PATH = "/usr/local/bin:/usr/bin:/bin"  # the shell program's only variable: where grep is
_CLK_TCK = os.sysconf("SC_CLK_TCK")


class Keeper:
    """A handle on the running keeper process. Sync methods that never block the loop."""

    def __init__(self, process: subprocess.Popen[bytes], pipe: int, mark: str) -> None:
        self.mark = mark  # MARK_VARIABLE=mark goes into every agent's environment
        self._process = process
        self._pipe: int | None = pipe
        self._pending = b""
        self._warned = False
        self._quiet = False  # `quiet`: unregistrations are not sent

    @classmethod
    def start(cls, *, shell: bool | None = None) -> Keeper:
        """Start the keeper process (a few ms, once). Its stdin is our pipe's read end.

        `shell`: run the shell program (True) or the Python one (False); by default the
        shell's wherever ``/bin/sh`` and ``grep`` are there.
        """
        read_end, write_end = os.pipe()  # both close-on-exec: no other child holds them
        mark = f"{os.getpid()}-{os.urandom(8).hex()}"
        if shell is None:
            shell = os.access(SHELL, os.X_OK) and _on_path("grep")
        if shell:
            argv = [SHELL, str(SHELL_PROGRAM), "supervisor-keeper", mark]
            env = {"PATH": _PATH}
        else:
            argv = [sys.executable, "-I", "-S", str(PROGRAM), "supervisor-keeper", mark]
            env = {}
        try:
            process = subprocess.Popen(
                argv,
                stdin=read_end,
                stdout=subprocess.DEVNULL,
                env=env,  # it needs nothing more, and must not hold the API token
                start_new_session=True,
            )
        except BaseException:
            os.close(write_end)
            raise
        finally:
            os.close(read_end)
        os.set_blocking(write_end, False)
        return cls(process, write_end, mark)

    @property
    def pid(self) -> int:
        return self._process.pid

    def register(self, pgid: int) -> None:
        """From now on, the group `pgid` is SIGKILLed if the supervisor dies.

        Call it while the leader `pgid` is our unreaped child (right after the spawn):
        it started before now, and any process that gets its number once it is reaped
        starts after now; so "started by now" tells the keeper it is the same process.
        """
        self._send(b"+%d %d\n" % (pgid, _ticks_now()))

    def unregister(self, pgid: int) -> None:
        """The group `pgid` is gone (its leader reaped); forget it.

        The line waits for the next one written (a registration, or ``q``): a write
        wakes the keeper, and the one after a crash would come between the exit and the
        respawn (~0.1 ms, docs/performance.md); the next spawn's ``+PGID`` carries it.
        Safe, for the reason `quiet` is: a number registered is killed only while its
        leader is provably the process registered, which a reaped leader never is."""
        if not self._quiet and self._pipe is not None:
            self._pending += b"-%d\n" % pgid

    def quiet(self) -> None:
        """A graceful shutdown has begun, and `quit` follows: stop sending unregistrations
        (a stop wave of N agents would wake the keeper N times to read them). Safe: the
        keeper kills a registered group only while its leader is provably the process
        registered (alive, and started by BY, or its pidfd), so a number reused after
        the leader is reaped is never hit, should the supervisor die before `quit`."""
        self._quiet = True

    def quit(self) -> None:
        """Tell the keeper to exit without killing anything; `close` reaps it. Call at
        graceful shutdown, once every group is stopped: the keeper reads what it has not
        read yet meanwhile. Idempotent."""
        if self._pipe is None:
            return
        # Blocking, to be sure every pending line (unregistrations above all) is read
        # before "q"; the keeper reads as fast as we write, so this takes no time.
        os.set_blocking(self._pipe, True)
        try:
            _write_all(self._pipe, self._pending + b"q\n")
        except OSError:
            pass  # the keeper is gone already
        os.close(self._pipe)
        self._pipe = None

    def close(self) -> None:
        """Let the keeper exit without killing anything (`quit`), and reap it.
        Idempotent. Waits (briefly, at most a second) for it to read ``q`` and exit.
        """
        self.quit()
        if self._process.returncode is not None:
            return
        try:
            self._process.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            # It cannot be killing anything we care about: we just told it to quit.
            self._process.kill()
            self._process.wait()

    def __enter__(self) -> Keeper:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _send(self, line: bytes) -> None:
        if self._pipe is None:
            return
        data = self._pending + line
        try:
            written = os.write(self._pipe, data)
        except BlockingIOError:
            written = 0
        except OSError as exc:  # the keeper died: carry on, unguarded
            self._warn(f"the no-orphans keeper is gone ({exc}); agents may outlive a crash")
            self._pending = b""
            return
        self._pending = data[written:]
        if self._pending:
            self._warn("the no-orphans keeper is slow; registrations are queued in memory")

    def _warn(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning(message)


def _on_path(program: str) -> bool:
    """Whether `program` is an executable file in a directory of `_PATH` (what
    ``shutil.which`` says, without importing shutil: `supervisor.lazyimports`)."""
    for directory in _PATH.split(":"):
        candidate = os.path.join(directory, program)
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return True
    return False


def _ticks_now() -> int:
    """Now on the clock of a process's start time: /proc/PID/stat's field 22 (clock ticks
    of CLOCK_BOOTTIME), read by the keeper."""
    return int(time.clock_gettime(time.CLOCK_BOOTTIME) * _CLK_TCK)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
