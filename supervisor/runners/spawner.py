"""The spawner thread: spawns made with a descriptor table of three (docs/operations.md,
"How agents are spawned"; docs/performance.md, crash -> running).

A spawned child gets a copy of its parent's descriptor table, and its exec then closes
every close-on-exec descriptor in it, one by one, while the new program waits to run: a
supervisor of N process agents holds ~3N (two pipes and a pidfd each), and each close
touches a file and an inode that are cold in the cache (~0.5 us). At 500 agents that was
~0.75 ms of every restart (`perf`: ``do_close_on_exec`` in the child's ``execve``), the
part of crash -> running that grew with N.

So a spawn may be made from one thread that left the process's descriptor table at its
start (``unshare(CLONE_FILES)``) and closed its copies of all but 0-2. The two ends a
spawn needs, the write ends of the agent's pipes, are opened in that table for the spawn
from ``/proc/self/task/TID/fd`` (a pipe opened again is the same pipe) and closed after
it. The caller waits (a spawn stays one synchronous step of the trio loop): the thread
hands back the pid or the exception. Its child is the process's like any other, waited
for by pidfd from the trio thread; only ``/proc/PID/task/TID/children`` lists it under
this thread.

That costs two thread switches (~20-100 us on a VM, more on a busy machine): worth it for
a spawn alone with a table this large (`LARGE_TABLE`), not for one in a burst (a start
wave, many crashes at once), where the children's closes overlap the next spawns and the
switches would be paid each time (measured: a start of 500 all through the thread was
~10 % slower). So only a spawn `LONE_AFTER` after the one before goes through it.

The thread blocks every signal: a signal handled there would have CPython write trio's
wake-up byte to a descriptor number that means nothing in this table. The child gets the
caller's signal mask back (``setsigmask``). No garbage is collected while the thread
runs: a finalizer run there would close its descriptor number in the wrong table.

Where ``unshare`` cannot be had (no ``os.unshare`` before Python 3.12 and no libc through
ctypes, or a seccomp filter refuses it), every spawn is made in the caller's thread.
"""

from __future__ import annotations

import _thread
import gc
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from supervisor.runners import procfs

CLONE_FILES = 0x400
LONE_AFTER = 0.005  # seconds since the last spawn ended: this one is alone
LARGE_TABLE = 64  # a new pipe's descriptor number this high: the closes cost more

SignalSet = set["int | signal.Signals"]
# (path, argv, env, stdout, stderr, signal mask or None: the caller's) -> pid
SpawnFn = Callable[[str, list[str], Mapping[bytes, bytes], int, int, "SignalSet | None"], int]

_spawner: Spawner | None = None
_spawner_pid = 0  # the process `_spawner` belongs to (a forked child makes its own)
_last_spawn = 0.0  # monotonic time the last spawn ended; 0: none yet


def spawn(
    path: str,
    argv: list[str],
    env: Mapping[bytes, bytes],
    stdout: int,
    stderr: int,
    how: SpawnFn,
) -> int:
    """``how(...)``, in the spawner thread if this spawn is alone and our table large."""
    global _last_spawn
    lone = _last_spawn and time.monotonic() - _last_spawn > LONE_AFTER
    there = _the_spawner() if lone and min(stdout, stderr) >= LARGE_TABLE else None
    try:
        if there is None:
            return how(path, argv, env, stdout, stderr, None)
        return there.spawn(path, argv, env, stdout, stderr, how)
    finally:
        _last_spawn = time.monotonic()


def _the_spawner() -> Spawner | None:
    global _spawner, _spawner_pid
    if _spawner_pid != procfs.own_pid():
        _spawner_pid = procfs.own_pid()
        _spawner = Spawner.start()
    return _spawner


class Spawner:
    """The thread, one job at a time (`call`)."""

    def __init__(self) -> None:
        self._job = _thread.allocate_lock()
        self._done = _thread.allocate_lock()
        self._job.acquire()
        self._done.acquire()
        self._fn: Callable[[], Any] | None = None
        self._result: Any = None
        self._error: BaseException | None = None
        self.native_id = 0

    @classmethod
    def start(cls) -> Spawner | None:
        """A running spawner, or None if its table could not be made its own."""
        spawner = cls()
        threading.Thread(target=spawner._run, name="spawner", daemon=True).start()
        spawner._done.acquire()  # it has left the table, or failed to
        return None if spawner._error is not None else spawner

    def spawn(
        self,
        path: str,
        argv: list[str],
        env: Mapping[bytes, bytes],
        stdout: int,
        stderr: int,
        how: SpawnFn,
    ) -> int:
        """``how(...)`` there, with our `stdout` and `stderr` opened in its table, and
        our signal mask."""
        ours = (  # the main thread's table is the process's (no gettid, a shorter walk)
            "/proc/self/fd/"
            if threading.current_thread() is threading.main_thread()
            else f"/proc/self/task/{threading.get_native_id()}/fd/"
        )
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, ())

        def job() -> int:
            out = os.open(ours + str(stdout), os.O_WRONLY | os.O_CLOEXEC)
            try:
                err = os.open(ours + str(stderr), os.O_WRONLY | os.O_CLOEXEC)
                try:
                    return how(path, argv, env, out, err, mask)
                finally:
                    os.close(err)
            finally:
                os.close(out)

        pid: int = self.call(job)
        return pid

    def call(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` in the thread; its result, or its exception raised here."""
        collecting = gc.isenabled()
        gc.disable()  # (this thread waits: no other allocates much meanwhile)
        self._fn = fn
        self._job.release()
        self._done.acquire()
        if collecting:
            gc.enable()
        error, self._error = self._error, None
        result, self._result = self._result, None
        if error is not None:
            raise error
        return result

    def _run(self) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        self.native_id = threading.get_native_id()
        try:
            _unshare_files()
            os.closerange(3, _fd_limit())
        except (OSError, AttributeError) as exc:
            self._error = exc
            self._done.release()
            return
        self._done.release()
        while True:
            self._job.acquire()
            fn, self._fn = self._fn, None
            try:
                assert fn is not None
                self._result = fn()
            except BaseException as exc:  # raised in the caller's thread
                self._error = exc
            fn = None  # the job's references (the environment) go now, not at the next
            self._done.release()


def _fd_limit() -> int:
    try:
        return max(os.sysconf("SC_OPEN_MAX"), 1024)
    except (OSError, ValueError):
        return 1 << 16


def _unshare_files() -> None:
    """Give the calling thread a descriptor table of its own (a copy of the process's)."""
    unshare = getattr(os, "unshare", None)  # Python 3.12+
    if unshare is not None:
        unshare(CLONE_FILES)
        return
    import ctypes  # here alone, once: ~0.4 MiB

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_FILES) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
