"""What the benchmark knows about processes, read from /proc, and how it cleans them up.

Everything here is supervisor-agnostic: a supervisor is a root pid, its agents are the
`sleep` processes among its children (``/proc/PID/task/*/children``), and the agent a child
belongs to is told by its argument (each agent sleeps a distinct number of seconds).

The benchmark makes itself a child subreaper (``PR_SET_CHILD_SUBREAPER``), so anything a
supervisor leaves behind (a daemonised pm2, children that outlive their parent) is re-parented
to us, can be counted, and is killed by `kill_descendants` on the way out.
"""

from __future__ import annotations

import ctypes
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Make orphaned descendants re-parent to this process instead of PID 1."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except OSError:
        return False


def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None


def children(pid: int) -> list[int]:
    """Direct children of `pid`, whichever of its threads forked them."""
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return out
    for tid in tids:
        text = _read(f"/proc/{pid}/task/{tid}/children")
        if text:
            out.extend(int(p) for p in text.split())
    return out


def descendants(pid: int) -> list[int]:
    """All descendants of `pid`, parents before their children."""
    out: list[int] = []
    todo = [pid]
    while todo:
        kids = children(todo.pop())
        out.extend(kids)
        todo.extend(kids)
    return out


@dataclass(frozen=True)
class Stat:
    state: str
    ppid: int
    utime: int  # clock ticks, whole thread group
    stime: int


def stat(pid: int) -> Stat | None:
    text = _read(f"/proc/{pid}/stat")
    if text is None:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return Stat(state=fields[0], ppid=int(fields[1]), utime=int(fields[11]), stime=int(fields[12]))


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    st = stat(pid)
    return st is not None and st.state not in "ZX"


def cmdline(pid: int) -> list[str]:
    text = _read(f"/proc/{pid}/cmdline")
    return text.split("\0")[:-1] if text else []


def sleep_arg(pid: int) -> str | None:
    """The argument of `pid` if it is an exec'd ``sleep`` (not a zombie, not pre-exec)."""
    argv = cmdline(pid)
    if len(argv) == 2 and os.path.basename(argv[0]) == "sleep":
        return argv[1]
    return None


def agents(roots: Iterable[int]) -> dict[str, int]:
    """The live `sleep` children of the supervisor `roots`: {argument: pid}."""
    out: dict[str, int] = {}
    for root in roots:
        for pid in children(root):
            arg = sleep_arg(pid)
            if arg is not None:
                out[arg] = pid
    return out


class AgentWatch:
    """Counts a supervisor's `sleep` children cheaply, polled in a tight loop.

    A child's argument is read once it has exec'd and cached by pid, so a poll costs one
    read of each root's ``children`` files plus one read per new pid.
    """

    def __init__(self, roots: Iterable[int]) -> None:
        self.roots = list(roots)
        self._known: dict[int, str] = {}
        self.first: float | None = None  # seconds from launch to the first agent, if timed

    def scan(self) -> dict[str, int]:
        pids: list[int] = []
        for root in self.roots:
            pids.extend(children(root))
        known = self._known
        out: dict[str, int] = {}
        for pid in pids:
            arg = known.get(pid)
            if arg is None:
                arg = sleep_arg(pid)
                if arg is None:
                    continue
                known[pid] = arg
            out[arg] = pid
        if len(known) > 2 * len(pids) + 64:
            live = set(pids)
            self._known = {p: a for p, a in known.items() if p in live}
        return out


def cpu_seconds(pid: int) -> float:
    """Seconds the main thread of `pid` has run on a CPU so far (/proc/PID/schedstat)."""
    return int((_read(f"/proc/{pid}/schedstat") or "0").split()[0]) / 1e9


def rss_kib(pid: int) -> int:
    text = _read(f"/proc/{pid}/status") or ""
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def pss_kib(pid: int) -> int:
    """Proportional set size: shared pages (libpython, libc) split between their users."""
    text = _read(f"/proc/{pid}/smaps_rollup") or ""
    for line in text.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


@dataclass(frozen=True)
class Usage:
    """CPU and wake-ups of a set of processes, summed over all their threads."""

    cpu_ns: int  # from /proc/PID/task/TID/schedstat
    ticks: int  # utime + stime from /proc/PID/stat
    voluntary: int  # voluntary context switches: each one is a sleep, so a wake-up
    involuntary: int
    threads: int


def usage(pids: Iterable[int]) -> Usage:
    cpu_ns = ticks = vol = invol = threads = 0
    for pid in pids:
        st = stat(pid)
        if st is None:
            continue
        ticks += st.utime + st.stime
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except FileNotFoundError:
            continue
        for tid in tids:
            threads += 1
            sched = _read(f"/proc/{pid}/task/{tid}/schedstat")
            if sched:
                cpu_ns += int(sched.split()[0])
            for line in (_read(f"/proc/{pid}/task/{tid}/status") or "").splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    vol += int(line.split()[1])
                elif line.startswith("nonvoluntary_ctxt_switches:"):
                    invol += int(line.split()[1])
    return Usage(cpu_ns, ticks, vol, invol, threads)


def wait_gone(pids: Iterable[int], timeout: float, interval: float = 0.0005) -> float | None:
    """Poll until every pid is gone or a zombie; the time it took, or None on timeout."""
    start = time.perf_counter()
    todo = set(pids)
    while True:
        todo = {p for p in todo if alive(p)}
        now = time.perf_counter()
        if not todo:
            return now - start
        if now - start > timeout:
            return None
        time.sleep(interval)


def reap(pids: Iterable[int] | None = None) -> None:
    """Collect zombies among our own children (all of them when `pids` is None)."""
    if pids is None:
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


def kill_descendants(timeout: float = 5.0) -> list[str]:
    """SIGKILL every process below us, reap them, and say which ones were found.

    Bounded: gives up after `timeout` seconds (a process stuck in the kernel cannot be
    helped from here).
    """
    me = os.getpid()
    found: dict[int, str] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = [p for p in descendants(me) if alive(p)]
        if not pids:
            break
        for p in pids:
            found.setdefault(p, " ".join(cmdline(p))[:60] or "?")
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.01)
        reap()
    reap()
    return [f"{pid} {cmd}" for pid, cmd in found.items()]
