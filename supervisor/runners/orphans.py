"""Our children that are not agent leaders, read once for many runs (docs/operations.md,
"Containment").

A child subreaper inherits the orphans of its agents' processes: `supervisor.runners.
containment` claims them for a run by process group (the leader's pid) or by the run's
mark in their environment (``SUPERVISOR_AGENT_RUN=…``). Reading our children costs a
read of a list as long as the number of agents, so a stop wave of N agents shares reads
(`shared_orphans`, `recent_orphans`) rather than reading it N times (issue 17).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Container

import trio

from supervisor.runners import procfs

RUN_VARIABLE = "SUPERVISOR_AGENT_RUN"
# A stop's first look (to send stop_signal) takes our own children as read within this
# long; what it misses gets the signal when a later, fresh look finds it.
_ORPHANS_TTL = 0.005


class Orphans:
    """Our children that are not agent leaders (orphans re-parented to us, the keeper),
    read once and sorted to the runs they may belong to: by process group (the leader's
    pid) and by the run's mark; the zombies by group, to be reaped."""

    def __init__(self, leaders: Container[int]) -> None:
        self.at = time.monotonic()  # before the read: what was ours by then is in it
        self.by_group: dict[int, list[int]] = {}
        self.by_mark: dict[str, list[int]] = {}
        self.zombies: dict[int, list[int]] = {}
        # Orphans are re-parented to our main thread (the kernel picks the reaper's first
        # live thread), so its file alone lists them: one read.
        me = procfs.own_pid()
        for pid in procfs.thread_children(me, me):
            if pid in leaders:
                continue
            stat = procfs.stat(pid)
            if stat is None:
                continue
            state, _ppid, group = stat
            if state == "Z":
                self.zombies.setdefault(group, []).append(pid)
                continue
            self.by_group.setdefault(group, []).append(pid)
            mark = run_mark(pid)
            if mark:
                self.by_mark.setdefault(mark, []).append(pid)


_NEEDLE = RUN_VARIABLE.encode() + b"="


def run_mark(pid: int) -> str:
    """The run mark in `pid`'s environment ("" if none, or unreadable)."""
    for item in procfs.read_bytes(f"/proc/{pid}/environ").split(b"\0"):
        if item.startswith(_NEEDLE):
            return item[len(_NEEDLE) :].decode("ascii", "replace")
    return ""


_last_orphans: Orphans | None = None


def scan_orphans(leaders: Container[int]) -> Orphans:
    """`Orphans`, read now."""
    global _last_orphans
    _last_orphans = Orphans(leaders)
    return _last_orphans


def recent_orphans(leaders: Container[int]) -> Orphans:
    """`Orphans` as read within the last `_ORPHANS_TTL` seconds."""
    if _last_orphans is None or time.monotonic() - _last_orphans.at > _ORPHANS_TTL:
        return scan_orphans(leaders)
    return _last_orphans


class _Pending:
    def __init__(self) -> None:
        self.done = trio.Event()
        self.orphans: Orphans | None = None


_pending: _Pending | None = None


async def shared_orphans(leaders: Container[int]) -> Orphans:
    """`Orphans` read after this call began, one read for every task that asks within one
    scheduling batch (a stop wave of N agents reads our children a few times, not N)."""
    global _pending
    pending = _pending
    if pending is not None:
        await pending.done.wait()
        assert pending.orphans is not None
        return pending.orphans
    pending = _pending = _Pending()
    try:
        await trio.lowlevel.cancel_shielded_checkpoint()  # the others of this batch join
    finally:
        _pending = None
        pending.orphans = scan_orphans(leaders)
        pending.done.set()
    return pending.orphans


def kill_strays(keep: Container[int], leaders: Container[int]) -> int:
    """SIGKILL our remaining children but `keep` (the keeper) and agent leaders: orphans
    of agents that no run could claim. For the very end of a graceful shutdown (their
    zombies go to init when we exit). Returns how many."""
    count = 0
    for pid in procfs.children(procfs.own_pid()):
        if pid in keep or pid in leaders:
            continue
        found: dict[int, int] = {}
        if procfs.open_pidfd(found, pid, parent=procfs.own_pid()):
            procfs.send(found[pid], signal.SIGKILL)
            count += 1
            os.close(found[pid])
    return count
