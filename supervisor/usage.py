"""What process agents cost: CPU % and RSS of each agent's process tree, read on demand.

Nothing polls. `ProcessUsage.read` scans /proc once when someone asks (GET /agents,
/metrics, the page's fetch of one agent) and attributes every process to the agent whose
leader it descends from or whose process group it is in: that covers the children an
agent forks and those that left its group but not its tree. CPU % is the difference of
the tree's CPU time between this read and the last read of the same agent (so it is
"since the previous look", as `top` computes it); on an agent's first read it is the
average since its leader started. The last reading per agent is kept until its leader
changes (a restart) or the agent is gone.

A scan costs about 20 µs per process on this machine: 20 ms with 1,000 agents, and only
when asked.
"""

from __future__ import annotations

import os
import time
from collections.abc import Collection

import attrs

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")
MIN_INTERVAL = 0.5  # seconds: two reads closer than this reuse the last CPU % figure


@attrs.frozen
class Usage:
    cpu: float | None  # percent of one core
    rss: int  # bytes, the whole tree


@attrs.frozen
class _Proc:
    ppid: int
    pgid: int
    ticks: int  # utime + stime
    rss: int  # pages
    start: int  # ticks after boot


@attrs.define
class _Reading:
    at: float
    ticks: int
    cpu: float | None


class ProcessUsage:
    """Readings of process trees, keyed by leader pid."""

    def __init__(self) -> None:
        self._last: dict[int, _Reading] = {}

    def read(self, leaders: Collection[int]) -> dict[int, Usage]:
        """The usage of the tree of each leader in `leaders` that is still alive."""
        if not leaders:
            self._last.clear()
            return {}
        procs = _scan()
        now = time.monotonic()
        uptime = _uptime()
        children: dict[int, list[int]] = {}
        groups: dict[int, list[int]] = {}
        for pid, proc in procs.items():
            children.setdefault(proc.ppid, []).append(pid)
            groups.setdefault(proc.pgid, []).append(pid)
        out: dict[int, Usage] = {}
        for leader in leaders:
            if leader not in procs:
                continue
            tree = _tree(leader, children) | set(groups.get(leader, ()))
            ticks = sum(procs[p].ticks for p in tree)
            rss = sum(procs[p].rss for p in tree) * _PAGE
            out[leader] = Usage(self._cpu(leader, now, ticks, procs[leader].start, uptime), rss)
        for gone in self._last.keys() - out.keys():
            del self._last[gone]
        return out

    def _cpu(self, leader: int, now: float, ticks: int, start: int, uptime: float) -> float | None:
        last = self._last.get(leader)
        if last is not None and now - last.at < MIN_INTERVAL:
            return last.cpu
        if last is not None and ticks >= last.ticks:
            cpu: float | None = 100.0 * (ticks - last.ticks) / _TICKS / (now - last.at)
        else:
            ran = uptime - start / _TICKS
            cpu = 100.0 * ticks / _TICKS / ran if ran > 0 else None
        self._last[leader] = _Reading(now, ticks, None if cpu is None else round(cpu, 1))
        return self._last[leader].cpu


def _tree(root: int, children: dict[int, list[int]]) -> set[int]:
    seen = {root}
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in seen:
                seen.add(child)
                todo.append(child)
    return seen


def _scan() -> dict[int, _Proc]:
    procs: dict[int, _Proc] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # gone meanwhile
        fields = stat[stat.rindex(b")") + 2 :].split()
        # fields[0] is the state (field 3 of proc(5)); so field n is fields[n - 3]
        procs[int(entry.name)] = _Proc(
            ppid=int(fields[1]),
            pgid=int(fields[2]),
            ticks=int(fields[11]) + int(fields[12]),
            rss=int(fields[21]),
            start=int(fields[19]),
        )
    return procs


def _uptime() -> float:
    with open("/proc/uptime") as f:
        return float(f.read().split()[0])
