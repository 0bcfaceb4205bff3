"""The placement seam: which of the desired agents run here, and whether one may start now.

The owner (`supervisor.owner`) never asks whether it is part of a cluster. It asks its
`Placement`, at four points of its work:

1. `placed(desired)`, before planning: the desired agents that are placed on this
   supervisor (the plan is made over those only).
2. `settle(plan)`, once the plan's stops are done and before its starts: let go of what
   the stopped agents held and acquire what the starts need; returns the plan keeping
   only the starts and restarts that may go ahead.
3. `may_start(agent_id)`, sync, right before every spawn: the owner hands it to each
   slot, which calls it immediately before each start of its agent, the first and every
   restart after a backoff (no await between the check and the runner). It returns None
   (yes) or why not; a refused slot ends ``stopped`` with that reason, and the owner
   launches it again at the next reconcile where it may start. A `start` request the
   placement refuses is answered 409.
4. `shared_overlay`: the API overlay this placement shares with others (loads then go to
   it, not to this supervisor's state file), or None: the owner keeps its own.

`start_group` is how many agents the owner starts between checkpoints (0: all at once,
with no await): a placement that must stay responsive while a reconcile starts hundreds
of agents (a lease to refresh) asks for small groups, and each group is checked with
`may_start` just before it starts.

`LocalPlacement` is the single-machine one: every agent is placed here and may always
start. The cluster's (`supervisor.cluster.placement.ClusterPlacement`) places agents by
rendezvous hashing over the live members and allows a start only while this member holds
the agent's ownership key on a live lease (docs/cluster.md).

May import: `supervisor.core` and `supervisor.manifest` (types); nothing of the shell.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from supervisor.core.plan import Plan
from supervisor.manifest import AgentSpec


class Placement(Protocol):
    """What the owner asks about where agents run (see the module's docstring)."""

    @property
    def start_group(self) -> int:
        """Agents started between two checkpoints; 0: all at once, with no await."""
        ...

    @property
    def shared_overlay(self) -> Mapping[str, dict[str, Any]] | None:
        """The shared API overlay (its entries invalid here are left out, not refused),
        or None: the owner's own overlay and state file are used."""
        ...

    def placed(self, desired: Mapping[str, AgentSpec]) -> Mapping[str, AgentSpec]:
        """The agents of `desired` placed on this supervisor. Sync, never blocks."""
        ...

    async def settle(self, p: Plan) -> Plan:
        """Release what `p.stop`'s agents held (they have stopped); acquire what the
        starts need. Returns `p` with only the starts and restarts that may go ahead."""
        ...

    def may_start(self, agent_id: str) -> str | None:
        """None if `agent_id` may start now, else why not. Sync, cheap, never blocks."""
        ...


class LocalPlacement:
    """A supervisor on its own: every agent is placed here and may always start."""

    start_group = 0
    shared_overlay = None

    def placed(self, desired: Mapping[str, AgentSpec]) -> Mapping[str, AgentSpec]:
        return desired

    async def settle(self, p: Plan) -> Plan:
        return p  # no checkpoint: the first start happens before the owner serves requests

    def may_start(self, agent_id: str) -> str | None:
        return None
