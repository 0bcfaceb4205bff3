"""What each agent costs: CPU % and RSS, read only when someone asks (docs/api.md).

Nothing polls. `read_usage(slots)` is called by what shows agents (GET /agents, GET
/agents/{id}, the event stream's snapshot, /metrics), once for all the agents it shows:

- **Process agents**: the run's whole process set as containment knows it
  (`supervisor.runners.containment`): its leader, the members of its cgroup, the
  leader's descendants, and the supervisor's re-parented children in the leader's group
  or carrying the run's mark, with their descendants (by cgroup, once the run's move into
  it is complete, its members alone). One pass over the supervisor's children serves
  every agent read. Each process's ``/proc/PID/stat`` gives its CPU time
  (utime + stime, and cutime + cstime: the children it waited for) and its RSS; the
  agent's figures are the sums. A read costs about 20 µs per process.
- **In-process agents**: the time their tasks held the event loop, every step, as
  counted by the loop-lag instrument (`supervisor.health.lag`); no RSS (they share the
  supervisor's memory).

CPU % is the change of that CPU time between this reading and the previous reading of
the same agent (by any client: the API keeps one last reading per agent), over the wall
time between them, as ``top`` and pm2 compute it; readings closer than `MIN_INTERVAL`
repeat the last figure. An agent's first reading (or the first after a restart) is the
average since its run started. In percent of one core: a tree using two cores reads 200.
`/metrics` gives the CPU seconds as a counter instead, so each scraper's ``rate()`` is its
own.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING

import attrs
import trio

from supervisor.runners import containment, procfs
from supervisor.runners.orphans import run_mark

if TYPE_CHECKING:
    from supervisor.slot import Slot

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")
MIN_INTERVAL = 0.5  # seconds: two readings closer than this repeat the last CPU %


@attrs.frozen
class Usage:
    cpu: float | None  # percent of one core (None: not known yet)
    cpu_seconds: float  # CPU time of the run (process) or of the agent (in-process)
    rss: int | None  # bytes, the whole process set; None for in-process agents


@attrs.define
class _Reading:
    run: object  # what the figure is of: the leader pid, or the slot's start
    at: float  # trio time
    seconds: float
    cpu: float | None


class UsageReadings:
    """The last reading of each agent, for the next one's CPU %; one per trio run."""

    def __init__(self) -> None:
        self.last: dict[str, _Reading] = {}

    def read(self, slots: Iterable[Slot]) -> dict[str, Usage]:
        """The usage of each slot in `slots` that runs (or ran, in-process) something."""
        now = trio.current_time()
        processes: dict[str, tuple[int, list[int]]] = {}
        out: dict[str, Usage] = {}
        for slot in slots:
            if slot.spec.kind == "in-process":
                if slot.started_at is not None:
                    seconds = slot.loop_time
                    cpu = self._cpu(
                        slot.spec.id, slot.started_at, now, seconds, now - slot.started_at
                    )
                    out[slot.spec.id] = Usage(cpu, seconds, None)
            elif slot.pid is not None:
                processes[slot.spec.id] = (slot.pid, [])
        if processes:
            uptime = _uptime()
            for agent_id, (leader, pids) in _process_sets(processes).items():
                seconds, rss, started = _sum(leader, pids)
                if started is None:
                    continue  # gone meanwhile
                ran = uptime - started
                out[agent_id] = Usage(self._cpu(agent_id, leader, now, seconds, ran), seconds, rss)
        return out

    def forget(self, present: Iterable[str]) -> None:
        """Drop the readings of agents no longer in the table."""
        keep = set(present)
        for agent_id in self.last.keys() - keep:
            del self.last[agent_id]

    def _cpu(
        self, agent_id: str, run: object, now: float, seconds: float, ran: float
    ) -> float | None:
        last = self.last.get(agent_id)
        if last is not None and last.run == run and seconds >= last.seconds:
            if now - last.at < MIN_INTERVAL:
                return last.cpu
            cpu: float | None = 100.0 * (seconds - last.seconds) / (now - last.at)
        else:  # first reading of this run: the average since it started
            cpu = 100.0 * seconds / ran if ran > 0 else None
        cpu = None if cpu is None else round(cpu, 1)
        self.last[agent_id] = _Reading(run, now, seconds, cpu)
        return cpu


_READINGS: trio.lowlevel.RunVar[UsageReadings] = trio.lowlevel.RunVar("usage_readings")


def read_usage(slots: Iterable[Slot]) -> dict[str, Usage]:
    """`UsageReadings.read` with this run's readings."""
    try:
        readings = _READINGS.get()
    except LookupError:
        readings = UsageReadings()
        _READINGS.set(readings)
    return readings.read(slots)


def forget_gone(present: Iterable[str]) -> None:
    """After a read of every agent: drop the readings of agents that are gone."""
    try:
        _READINGS.get().forget(present)
    except LookupError:
        pass


def _process_sets(
    agents: dict[str, tuple[int, list[int]]],
) -> dict[str, tuple[int, list[int]]]:
    """For each agent (its leader pid), the other pids of its run, by containment's rules."""
    runs = {run.leader: run for run in containment.live_runs() if run.leader}
    by_leader: dict[int, list[int]] = {}
    by_mark: dict[str, list[int]] = {}
    roots: list[tuple[int, list[int]]] = []
    for leader, pids in agents.values():
        by_leader[leader] = pids
        run = runs.get(leader)
        if run is not None and run.whole:  # its cgroup lists all of it: no tree to walk
            assert run.cgroup is not None
            pids += (pid for pid in procfs.cgroup_members(run.cgroup) if pid != leader)
            continue
        roots.append((leader, pids))
        if run is None:
            continue
        by_mark[run.mark] = pids
        if run.cgroup is not None:
            for pid in procfs.cgroup_members(run.cgroup):
                if pid != leader:
                    pids.append(pid)
                    roots.append((pid, pids))
    # the supervisor's re-parented children: in an agent's group, or carrying its mark
    for pid in procfs.children(os.getpid()):
        if pid in containment.LEADERS:
            continue
        stat = procfs.stat(pid)
        if stat is None or stat[0] == "Z":
            continue
        found = by_leader.get(stat[2])
        if found is None:
            found = by_mark.get(run_mark(pid))
        if found is not None and pid not in found:
            found.append(pid)
            roots.append((pid, found))
    while roots:  # and everyone's descendants
        parent, pids = roots.pop()
        for pid in procfs.children(parent):
            if pid not in pids:
                pids.append(pid)
                roots.append((pid, pids))
    return agents


def _sum(leader: int, others: list[int]) -> tuple[float, int, float | None]:
    """(CPU seconds, RSS bytes, the leader's start in seconds after boot) of a set."""
    ticks = pages = 0
    started = None
    for pid in (leader, *others):
        text = procfs.read(f"/proc/{pid}/stat", 1024)
        if not text:
            continue  # gone meanwhile
        # after the command's ")": field 3 of proc(5) first, so field n is fields[n - 3]
        fields = text[text.rindex(")") + 2 :].split()
        ticks += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
        pages += int(fields[21])
        if pid == leader:
            started = int(fields[19]) / _TICKS
    return ticks / _TICKS, pages * _PAGE, started


def _uptime() -> float:
    return float(procfs.read("/proc/uptime", 64).split()[0])
