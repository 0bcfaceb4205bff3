"""The cluster's `supervisor.placement.Placement`: agents placed by rendezvous hashing,
each started only while this member holds its ownership key on a live lease.

A thin adapter over `ClusterMember`: `placed` is the member's `mine` (none while it has
no lease), `settle` releases the keys of the agents the plan stopped and claims those of
the agents it starts (and of unchanged agents a fence stopped, so that they start
again), and `may_start` is the member's: its key held, on a lease that provably lives by
the member's own clock at that moment. The shared overlay is the one in etcd. Starts go
`START_GROUP` at a time, each group checked just before it starts, and the checkpoint
between groups keeps the loop responsive: a few hundred spawns in one go stall it for
about a millisecond each.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from supervisor.cluster.member import ClusterMember
from supervisor.core.plan import Plan
from supervisor.manifest import AgentSpec

START_GROUP = 16  # agents started between checkpoints


class ClusterPlacement:
    """Placement for a cluster member (see the module's docstring)."""

    start_group = START_GROUP

    def __init__(self, member: ClusterMember) -> None:
        self.member = member

    @property
    def shared_overlay(self) -> Mapping[str, dict[str, Any]]:
        return self.member.overlay

    def placed(self, desired: Mapping[str, AgentSpec]) -> Mapping[str, AgentSpec]:
        return self.member.mine(desired)

    async def settle(self, p: Plan) -> Plan:
        self.member.release(p.stop)
        # Unchanged agents whose key is not held were stopped by a fence (or refused):
        # claimed again with the starts, so that they start again (docs/cluster.md).
        fenced = tuple(i for i in p.unchanged if i not in self.member.held)
        await self.member.claim(p.start + fenced)
        held = self.member.holds
        return attrs.evolve(
            p,
            start=tuple(i for i in p.start if held(i)),
            restart=tuple(i for i in p.restart if held(i)),
        )

    def may_start(self, agent_id: str) -> str | None:
        return self.member.may_start(agent_id)
