"""The HTTP control API (docs/api.md): Starlette on our HTTP/1.1 server (`api.server`).

The API changes nothing itself. Reads (`GET /agents`, `/readyz`, `/metrics`) look at
`Supervisor.slots` directly: they are sync, and the table only changes between the
owner's awaits. Every change (load, unload, start, stop, restart, reload) is a request to
the owner, which answers it; so two loads of one id race in the owner's queue, not here,
and a client that goes away mid-request leaves the owner to finish or undo the work whole.

This module is the app: the routes and their handlers. Around it (see
`supervisor.api`): `agent` (the AGENT shape), `access` (the address, the token and the
loopback rule), `body` (reading and checking request bodies), `errors` (every failure
answers JSON; a request the API refuses never reaches the owner, so it changes nothing),
`openapi`, `metrics`, `cluster` and `serve` (the server: `server`, `http11`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable
from functools import partial
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp

from supervisor.api.access import Guard
from supervisor.api.agent import Fields, agents_json, not_ready, parse_fields, wall_offset
from supervisor.api.body import read_json_object
from supervisor.api.errors import EXCEPTION_HANDLERS, REFUSALS, ApiError, refusal
from supervisor.api.metrics import RequestCounts, SupervisorCollector
from supervisor.api.observe import Observe
from supervisor.api.routing import CountRequests, Endpoint, route
from supervisor.api.rules import RequestRules
from supervisor.owner import Supervisor
from supervisor.slot import Slot

if TYPE_CHECKING:  # the member's etcd client (httpx) loads only in cluster mode
    from prometheus_client import CollectorRegistry

    from supervisor.cluster.member import ClusterMember


class ControlApi:
    """The route handlers, bound to one supervisor."""

    def __init__(
        self,
        sup: Supervisor,
        guard: Guard,
        requests: RequestCounts,
        cluster: ClusterMember | None = None,
    ) -> None:
        self.sup = sup
        self.guard = guard
        self.cluster = cluster
        self.requests = requests
        self._registry: CollectorRegistry | None = None  # made at the first scrape

    def routes(self) -> list[BaseRoute]:
        load: Endpoint = self.load
        unload: Endpoint = self.unload
        more: list[BaseRoute] = []
        if self.cluster is not None:  # loads go to the cluster's shared overlay
            from supervisor.api.cluster import cluster_handlers  # (only a member's)

            load, unload, more = cluster_handlers(self.sup, self.cluster, self.guard)
        return [
            route("/agents", GET=self.list_agents, POST=load),
            route("/agents/{id}", GET=self.get_agent, DELETE=unload),
            route("/agents/{id}/start", POST=partial(self.control, "start")),
            route("/agents/{id}/stop", POST=partial(self.control, "stop")),
            route("/agents/{id}/restart", POST=partial(self.control, "restart")),
            route("/reload", POST=self.reload),
            route("/healthz", GET=self.healthz),
            route("/readyz", GET=self.readyz),
            route("/metrics", GET=self.metrics),
            route("/openapi.json", GET=self.openapi),
            *Observe(self.sup, self.guard).routes(),
            *more,
        ]

    async def list_agents(self, request: Request) -> Response:
        fields = parse_fields(request.query_params.getlist("fields"))
        agents = agents_json(self.sup.slots.values(), wall_offset(), every=True, fields=fields)
        return JSONResponse({"agents": agents})

    async def get_agent(self, request: Request) -> Response:
        fields = parse_fields(request.query_params.getlist("fields"))
        return _agent_answer(self._slot(request.path_params["id"]), fields=fields)

    async def load(self, request: Request) -> Response:
        table = await read_json_object(request)
        return _agent_answer(await self._ask(self.sup.load(table)), status_code=201)

    async def unload(self, request: Request) -> Response:
        agent_id = request.path_params["id"]
        await self._ask(self.sup.unload(agent_id))
        return JSONResponse({"unloaded": agent_id})

    async def control(self, action: str, request: Request) -> Response:
        do = {"start": self.sup.start, "stop": self.sup.stop, "restart": self.sup.restart}
        return _agent_answer(await self._ask(do[action](request.path_params["id"])))

    async def reload(self, request: Request) -> Response:
        result = await self._ask(self.sup.reload(wait=False))
        failed = await self.sup.wait_started(result.started + result.restarted)
        return JSONResponse(
            {
                "started": list(result.started),
                "stopped": list(result.stopped),
                "restarted": list(result.restarted),
                "unchanged": list(result.unchanged),
                "failed": failed,
            }
        )

    async def healthz(self, request: Request) -> Response:
        # Answering at all proves the supervisor's trio loop is running.
        return JSONResponse({"ok": True})

    async def readyz(self, request: Request) -> Response:
        waiting = not_ready(self.sup)
        if waiting:
            return JSONResponse({"ready": False, "not_ready": waiting}, status_code=503)
        return JSONResponse({"ready": True, "not_ready": {}})

    async def metrics(self, request: Request) -> Response:
        # prometheus-client loads here, at the first scrape (docs/performance.md).
        from prometheus_client import CollectorRegistry
        from prometheus_client.exposition import choose_encoder

        if self._registry is None:
            self._registry = CollectorRegistry(auto_describe=False)
            self._registry.register(SupervisorCollector(self.sup, self.requests))
        # Negotiated like prometheus-client's own handlers: OpenMetrics when asked for.
        encode, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encode(self._registry), headers={"content-type": content_type})

    async def openapi(self, request: Request) -> Response:
        from supervisor.api.openapi import OPENAPI  # (a large document, seldom asked for)

        return JSONResponse(OPENAPI)

    def _slot(self, agent_id: str) -> Slot:
        slot = self.sup.slots.get(agent_id)
        if slot is None:
            raise ApiError(404, f"no agent {agent_id!r}")
        return slot

    async def _ask(self, request: Awaitable[Any]) -> Any:
        """Await a request to the owner, translating its refusals into answers."""
        try:
            return await request
        except REFUSALS as exc:
            raise refusal(exc) from None


def _agent_answer(slot: Slot, status_code: int = 200, fields: Fields | None = None) -> JSONResponse:
    agent = agents_json([slot], wall_offset(), fields=fields)[0]
    return JSONResponse(agent, status_code=status_code)


def build_app(sup: Supervisor, guard: Guard, cluster: ClusterMember | None = None) -> ASGIApp:
    """The ASGI app for `sup`, serving whom `guard` says under `supervisor.api.rules`
    (`cluster`: its membership, if it is a cluster member)."""
    requests: RequestCounts = Counter()
    api = ControlApi(sup, guard, requests, cluster)
    routes = api.routes()
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(CountRequests, routes=routes, counts=requests),
            Middleware(RequestRules, guard=guard),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
    )
    # `/reload/` is a 404, not a 307 to a Location built from the Host header.
    app.router.redirect_slashes = False
    return app
