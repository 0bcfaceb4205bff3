"""The control API's cluster routes: ``GET /cluster``, and loads that go to the cluster.

In a cluster, an agent loaded over the API belongs to the whole cluster, not to the
member that was asked: ``POST /agents`` and ``DELETE /agents/{id}`` on any member write
the shared overlay in etcd, and the member the agent is placed on starts or stops it
through its watch. So they answer once the overlay is written (202 and 200), not once
the agent runs or is gone: that happens on another supervisor, maybe a moment later.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute

from supervisor import manifest as mf
from supervisor.api.access import Guard
from supervisor.api.body import read_json_object
from supervisor.api.errors import ApiError, invalid
from supervisor.api.routing import Endpoint, route
from supervisor.cluster import Refused, Unavailable
from supervisor.manifest import ManifestError
from supervisor.owner import Supervisor

if TYPE_CHECKING:  # the member's etcd client (httpx) loads only in cluster mode
    from supervisor.cluster.member import ClusterMember


class ClusterRoutes:
    """Handlers bound to one supervisor and its cluster membership."""

    def __init__(self, sup: Supervisor, cluster: ClusterMember, guard: Guard) -> None:
        self.sup = sup
        self.cluster = cluster
        self.guard = guard

    async def view(self, request: Request) -> Response:
        """The members, and for every agent the member it is placed on and who holds it."""
        c = self.cluster
        placed = c.assignment(self._after())
        return JSONResponse(
            {
                "member": c.name,
                "joined": c.lease is not None,
                "lease_ttl": c.ttl,
                "members": dict(sorted(c.members.items())),
                "agents": {
                    agent_id: {
                        "member": placed[agent_id],
                        "held_by": c.owners[agent_id].member if agent_id in c.owners else None,
                    }
                    for agent_id in sorted(placed)
                },
            }
        )

    async def load(self, request: Request) -> Response:
        """Add an agent to the shared overlay; 202 once stored, with where it is placed."""
        self.guard.check(request)
        table = await read_json_object(request)
        agent_id = table.pop("id", None)
        if agent_id is not None and not isinstance(agent_id, str):
            raise ApiError(422, f"request: id: must be a string, not {agent_id!r}")
        m = self.sup.manifest
        check = partial(
            mf.agent_from_table,
            agent_id,
            table,
            base=m.path.parent,
            defaults=m.defaults,
            known_ids=[*m.agents, *self.cluster.overlay],
        )
        try:
            # A folder agent's files are read: in a worker thread (docs/manifest.md, "Limits").
            spec = await trio.to_thread.run_sync(check) if "path" in table else check()
        except ManifestError as exc:
            raise invalid(exc) from None
        if spec.id in m.agents:
            raise ApiError(409, f"agent {spec.id!r} is declared in {m.path}")
        if not await self._store(self.cluster.coordinator.put_overlay(spec.id, table)):
            raise ApiError(409, f"agent {spec.id!r} is already loaded in the cluster")
        member = self.cluster.assignment({**self._after(), spec.id: spec.after})[spec.id]
        return JSONResponse({"id": spec.id, "stored": "cluster", "member": member}, 202)

    async def unload(self, request: Request) -> Response:
        """Remove an agent from the shared overlay; its member stops it through its watch."""
        self.guard.check(request)
        agent_id = request.path_params["id"]
        m = self.sup.manifest
        if agent_id in m.agents:
            raise ApiError(
                409, f"agent {agent_id!r} is declared in {m.path}; remove it there and reload"
            )
        if not await self._store(self.cluster.coordinator.delete_overlay(agent_id)):
            raise ApiError(404, f"no agent {agent_id!r} loaded in the cluster")
        return JSONResponse({"unloaded": agent_id})

    def _after(self) -> dict[str, Sequence[str]]:
        """{id: its `after`} of every agent of the cluster, for placing them."""
        after: dict[str, Sequence[str]] = {i: s.after for i, s in self.sup.manifest.agents.items()}
        for agent_id, table in self.cluster.overlay.items():
            after.setdefault(agent_id, _names(table.get("after")))
        return after

    async def _store(self, call: Awaitable[bool]) -> bool:
        try:
            return bool(await call)
        except (Unavailable, Refused) as exc:
            raise ApiError(503, f"the cluster's etcd did not take it: {exc}") from None


def _names(value: Any) -> tuple[str, ...]:
    if isinstance(value, list):
        return tuple(v for v in value if isinstance(v, str))
    return ()


def cluster_handlers(
    sup: Supervisor, cluster: ClusterMember, guard: Guard
) -> tuple[Endpoint, Endpoint, list[BaseRoute]]:
    """A cluster member's ``POST /agents`` and ``DELETE /agents/{id}`` handlers, and
    its own routes (``GET /cluster``)."""
    routes = ClusterRoutes(sup, cluster, guard)
    return routes.load, routes.unload, [route("/cluster", GET=routes.view)]
