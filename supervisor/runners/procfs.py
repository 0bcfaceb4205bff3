"""Reading /proc and signalling by pidfd: the low-level side of containment.

Sync, never blocking: /proc files are in memory. Functions that cannot read (the
process is gone) return an empty or None answer rather than raising.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

_pid = os.getpid()


def own_pid() -> int:
    """Our pid, without a syscall: glibc no longer caches ``getpid`` (a restart called it
    twice, ~15 us each after the machine was idle). Kept right across a fork."""
    return _pid


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


def open_pidfd(
    found: dict[int, int], pid: int, parent: int | None = None, group: int | None = None
) -> bool:
    """Add a pidfd on `pid` to `found` if it is alive (and still `parent`'s child, in
    process group `group`)."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return False
    now = stat(pid)  # read after the pidfd: it pins the process we check
    if (
        now is None
        or now[0] in "ZX"
        or (parent is not None and now[1] != parent)
        or (group is not None and now[2] != group)
    ):
        os.close(fd)
        return False
    found[pid] = fd
    return True


def send(fd: int, sig: int) -> None:
    try:
        signal.pidfd_send_signal(fd, sig)
    except OSError:
        pass  # gone meanwhile


def reap(fd: int) -> None:
    """Reap the process of `fd` if it is an exited child of ours (else leave it)."""
    try:
        os.waitid(os.P_PIDFD, fd, os.WEXITED | os.WNOHANG)
    except ChildProcessError:
        pass


def reap_pid(pid: int) -> None:
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return
    reap(fd)
    os.close(fd)


def stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgid) of `pid`, or None if it is gone."""
    text = read(f"/proc/{pid}/stat", 1024)
    if not text:
        return None
    fields = text[text.rindex(")") + 2 :].split(maxsplit=3)
    return fields[0], int(fields[1]), int(fields[2])


def thread_children(pid: int, tid: int) -> list[int]:
    """The children of one thread of `pid`."""
    return [int(p) for p in read(f"/proc/{pid}/task/{tid}/children", 1 << 20).split()]


def children(pid: int) -> list[int]:
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    if len(tasks) == 1:  # most processes: one thread, one file
        return [int(p) for p in read(f"/proc/{pid}/task/{tasks[0]}/children", 1 << 20).split()]
    out: list[int] = []
    for task in tasks:
        out += [int(p) for p in read(f"/proc/{pid}/task/{task}/children", 1 << 20).split()]
    return out


def cgroup_members(cgroup: Path | str) -> list[int]:
    """The pids in `cgroup` and in its descendants (zombies are in none)."""
    base = str(cgroup)
    pids = [int(p) for p in read(base + "/cgroup.procs", 1 << 20).split()]
    if _has_descendants(base):  # an agent with rights to its cgroup may have made some
        try:
            with os.scandir(base) as entries:  # kernfs gives the types: no stat per file
                subgroups = [entry.path for entry in entries if entry.is_dir()]
        except OSError:
            subgroups = []
        for sub in subgroups:
            pids += cgroup_members(sub)
    return pids


def cgroup_populated(cgroup: Path | str, events: int | None = None) -> bool:
    """Whether a live process is in `cgroup` or below it (``cgroup.events``: one read,
    where `cgroup_members` is two; `events`: that file, open). True if it cannot be read."""
    text = b""
    if events is not None:
        try:
            text = os.pread(events, 4096, 0)
        except OSError:
            pass
    text = text or read_bytes(f"{cgroup}/cgroup.events", 4096)
    return not text.startswith(b"populated 0") if text else True


def _has_descendants(cgroup: str) -> bool:
    """Whether `cgroup` has child cgroups: kernfs counts a directory's subdirectories in
    its link count (2 + N), so one stat tells, where a listing costs an entry per file.
    True if it cannot be told."""
    try:
        return os.stat(cgroup).st_nlink != 2
    except OSError:
        return True


def read(path: str, limit: int) -> str:
    return read_bytes(path, limit).decode("utf-8", "replace")


def read_bytes(path: str, limit: int = 1 << 20) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return b""
    try:
        return os.read(fd, limit)
    except OSError:
        return b""
    finally:
        os.close(fd)
