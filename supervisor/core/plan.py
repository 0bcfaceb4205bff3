"""Reconcile planning: pure functions from (live, desired) to what must change.

An agent is *changed* when its resolved spec differs (`AgentSpec` equality covers every
key, and a folder agent's file digest); unchanged agents never appear in a plan's
start / stop / restart lists, so a reload never touches them.

Order follows `after`: an agent starts only after what it is `after`, and stops before
it. `stop_waves` groups agents into waves that can stop concurrently.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import attrs

from supervisor.manifest import AgentSpec


@attrs.frozen
class Plan:
    """What a reconcile does. Each id of live and desired is in exactly one list."""

    start: tuple[str, ...]  # in desired, not live (or live but disabled); in start order
    stop: tuple[str, ...]  # in live, not desired; in stop order
    restart: tuple[str, ...]  # in both, spec changed; in start order
    unchanged: tuple[str, ...]


def plan(live: Mapping[str, AgentSpec], desired: Mapping[str, AgentSpec]) -> Plan:
    """Compute the plan that turns `live` into `desired`."""
    start: list[str] = []
    restart: list[str] = []
    unchanged: list[str] = []
    for agent_id, spec in desired.items():
        old = live.get(agent_id)
        if old is None:
            start.append(agent_id)
        elif old is spec or old == spec:  # a reload hands back unchanged specs as they were
            unchanged.append(agent_id)
        elif not old.enabled and spec.enabled:  # nothing ran: it starts, not restarts
            start.append(agent_id)
        else:
            restart.append(agent_id)
    stop = [i for i in live if i not in desired]
    return Plan(
        start=tuple(start_order(start, desired)),
        stop=tuple(i for wave in stop_waves(stop, live) for i in wave),
        restart=tuple(start_order(restart, desired)),
        unchanged=tuple(unchanged),
    )


def start_order(ids: Iterable[str], specs: Mapping[str, AgentSpec]) -> list[str]:
    """`ids` ordered so that each comes after the ids (among them) it is `after`."""
    return [i for wave in reversed(stop_waves(ids, specs)) for i in wave]


def stop_waves(ids: Iterable[str], specs: Mapping[str, AgentSpec]) -> list[tuple[str, ...]]:
    """Group `ids` into waves to stop one after another; each wave's agents concurrently.

    An agent stops in a later wave than every agent (among `ids`) that is `after` it, so
    dependents stop before what they depend on. `after` names outside `ids` are ignored;
    `after` has no cycles (the manifest rejects them).
    """
    chosen = list(ids)
    members = set(chosen)
    # Kahn's algorithm on the reversed `after` graph: a wave holds the agents whose
    # dependents (among `ids`) have all stopped in earlier waves.
    waiting_on = dict.fromkeys(chosen, 0)  # dependents not yet stopped
    for i in chosen:
        for dep in set(specs[i].after) & members:
            waiting_on[dep] += 1
    wave = [i for i in chosen if waiting_on[i] == 0]
    waves: list[tuple[str, ...]] = []
    while wave:
        waves.append(tuple(wave))
        following = []
        for i in wave:
            for dep in set(specs[i].after) & members:
                waiting_on[dep] -= 1
                if waiting_on[dep] == 0:
                    following.append(dep)
        wave = following
    return waves
