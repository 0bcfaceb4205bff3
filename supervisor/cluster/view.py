"""What a member knows of its cluster, folded from a snapshot and the watch that follows it.

The live members (and so the placement of every agent, by rendezvous hashing), who holds
each ownership key, the shared overlay of agents loaded over the API, the cluster's epoch
and whether its founding's quiet period is on. Sync and free of I/O: the member feeds it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from supervisor.cluster.coordinator import Change, Holder, Snapshot
from supervisor.cluster.rendezvous import Placement, placement_keys
from supervisor.logs import log
from supervisor.manifest import AgentSpec


class ClusterView:
    """One member's view of the cluster (see the module's docstring)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.members: dict[str, dict[str, Any]] = {}
        self.owners: dict[str, Holder] = {}  # agent id -> who holds its key
        self.overlay: dict[str, dict[str, Any]] = {}  # the shared API overlay
        self.placement = Placement(())
        self.epoch: str | None = None  # as the store says now
        self.settling = False  # the founding's quiet period: nobody claims
        self.revision = 0  # the latest revision seen in this epoch
        self._keys: dict[str, str] = {}  # placement key of each id, as `placed` last saw them

    def load(self, snapshot: Snapshot) -> None:
        self.members = dict(snapshot.members)
        self.owners = dict(snapshot.owners)
        self.overlay = dict(snapshot.overlay)
        self.placement = Placement(self.members)
        self.epoch, self.settling = snapshot.epoch, snapshot.settling
        self.revision = snapshot.revision

    def apply(self, changes: Iterable[Change], waiting: set[str]) -> bool:
        """Fold watched changes in; return whether they matter to the owner's plan: the
        members, the overlay, the quiet period, or a key in `waiting` was freed."""
        wake = members_changed = False
        for change in changes:
            if change.section == "epoch":
                self.epoch = change.value
                continue
            if change.section == "settling":
                self.settling = change.value is not None
                wake = True
                continue
            table: dict[str, Any] = getattr(self, change.section)
            if change.value is None:
                existed = table.pop(change.id, None) is not None
            else:
                existed = change.id in table
                table[change.id] = change.value
            if change.section == "members":
                members_changed |= change.value is None or not existed
            elif change.section == "overlay":
                wake = True
            elif change.value is None and change.id in waiting:
                wake = True  # a key we wait for was freed
        if members_changed:
            self.placement = Placement(self.members)
            log.info("cluster: members now %s", ", ".join(sorted(self.members)) or "none")
        return wake or members_changed

    def assignment(self, after: Mapping[str, Sequence[str]]) -> dict[str, str | None]:
        """{id: member that should run it} for the agents `after` maps to their `after`.

        Agents linked by `after` go to one member, placed by their group's least id.
        """
        keys = placement_keys(after)
        return {agent_id: self.placement.owner(key) for agent_id, key in keys.items()}

    def placed(self, desired: Mapping[str, AgentSpec]) -> dict[str, AgentSpec]:
        """The agents of `desired` placed on this member."""
        self._keys = placement_keys({i: spec.after for i, spec in desired.items()})
        owner = self.placement.owner
        return {i: spec for i, spec in desired.items() if owner(self._keys[i]) == self.name}

    def placed_here(self, agent_id: str) -> bool:
        """Whether `agent_id` is placed on this member now (by its key as `placed` saw it)."""
        return self.placement.owner(self._keys.get(agent_id, agent_id)) == self.name
