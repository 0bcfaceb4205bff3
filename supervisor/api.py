"""The HTTP control API (SPEC §6): Starlette on hypercorn's trio worker.

The API changes nothing itself. Reads (`GET /agents`, `/readyz`, `/metrics`) look at
`Supervisor.slots` directly: they are sync, and the table only changes between the
owner's awaits. Every change (load, unload, start, stop, restart, reload) is a request to
the owner, which answers it; so two loads of one id race in the owner's queue, not here,
and a client that goes away mid-request leaves the owner to finish or undo the work whole.

This module is the app: the routes and their handlers, the AGENT shape they answer, and
`serve_api`. Around it: `api_access` (the address, the token and the loopback rule),
`api_body` (reading and checking request bodies), `api_errors` (every failure answers
JSON; a request the API refuses never reaches the owner, so it changes nothing) and
`openapi` (the document ``GET /openapi.json`` serves). The names other modules use are
all importable from here.
"""

from __future__ import annotations

import logging
import signal
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any

import trio
from hypercorn.config import Config, Sockets
from hypercorn.trio.run import worker_serve
from hypercorn.utils import wrap_app
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from supervisor import manifest as mf
from supervisor.api_access import (
    ApiConfigError,
    Guard,
    api_token,
    bind,
    bound_address,
    parse_address,
)
from supervisor.api_body import MAX_BODY, DrainUnreadBody, read_json_object
from supervisor.api_errors import EXCEPTION_HANDLERS, REFUSALS, ApiError, refusal
from supervisor.logs import log
from supervisor.metrics import RequestCounts, SupervisorCollector
from supervisor.openapi import OPENAPI
from supervisor.slot import ExitRecord, Slot
from supervisor.supervisor import Supervisor

__all__ = [
    "MAX_BODY",
    "OPENAPI",
    "ApiConfigError",
    "ApiError",
    "ControlApi",
    "Endpoint",
    "Guard",
    "agent_json",
    "build_app",
    "not_ready",
    "parse_address",
    "read_json_object",
    "serve_api",
    "wall_offset",
]

GRACE = 3.0  # seconds requests in flight get to finish when the API stops

# hypercorn's own messages ("Running on ...") repeat ours; keep its warnings and errors.
_http_log = logging.getLogger("supervisor.http")
_http_log.setLevel(logging.WARNING)


# -- the AGENT shape ----------------------------------------------------------------


_WALL_OFFSET: trio.lowlevel.RunVar[float] = trio.lowlevel.RunVar("wall_offset")


def wall_offset() -> float:
    """Add this to a trio time to get a wall time (seconds since the epoch).

    Taken once per run: read afresh, the two clocks' readings would make an untouched
    agent's ``since`` wobble by a fraction of a millisecond from one answer to the next.
    """
    try:
        return _WALL_OFFSET.get()
    except LookupError:
        _WALL_OFFSET.set(time.time() - trio.current_time())
        return _WALL_OFFSET.get()


def agent_json(slot: Slot, offset: float) -> dict[str, Any]:
    """The AGENT object of SPEC §6, plus ``up``, ``status`` and ``reason``."""
    s = slot.statistics()
    return {
        "id": s.id,
        "kind": s.kind,
        "source": s.source,
        "state": s.state,
        "pid": s.pid,
        "restarts": s.restarts,
        "since": round(offset + s.since, 3),
        "last_exit": _exit_json(s.last_exit, offset),
        "spec": mf.spec_to_table(s.spec),
        "up": slot.up,
        "status": s.status,
        "reason": s.reason,
    }


def _exit_json(rec: ExitRecord | None, offset: float) -> dict[str, Any] | None:
    if rec is None:
        return None
    out: dict[str, Any] = {"at": round(offset + rec.at, 3)}
    if rec.code is not None:
        out["code"] = rec.code
    if rec.signal is not None:
        out["signal"] = _signal_name(rec.signal)
    if rec.error is not None:
        out["error"] = rec.error
    return out


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def not_ready(sup: Supervisor) -> dict[str, str]:
    """{id: why} for every enabled agent that is not up (running, or exited ok)."""
    return {
        agent_id: f"{slot.state}: {slot.reason}" if slot.reason else slot.state
        for agent_id, slot in sup.slots.items()
        if slot.spec.enabled and not slot.up
    }


# -- the routes ---------------------------------------------------------------------

Endpoint = Callable[[Request], Awaitable[Response]]


class ControlApi:
    """The route handlers, bound to one supervisor."""

    def __init__(self, sup: Supervisor, guard: Guard, requests: RequestCounts) -> None:
        self.sup = sup
        self.guard = guard
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(SupervisorCollector(sup, requests))

    def routes(self) -> list[BaseRoute]:
        load: Endpoint = self.load
        unload: Endpoint = self.unload
        more: list[BaseRoute] = []
        if self.sup.cluster is not None:  # loads go to the cluster's shared overlay
            from supervisor.cluster.api import cluster_handlers

            load, unload, more = cluster_handlers(self.sup, self.sup.cluster, self.guard)
        return [
            _route("/agents", GET=self.list_agents, POST=load),
            _route("/agents/{id}", GET=self.get_agent, DELETE=unload),
            _route("/agents/{id}/start", POST=partial(self.control, "start")),
            _route("/agents/{id}/stop", POST=partial(self.control, "stop")),
            _route("/agents/{id}/restart", POST=partial(self.control, "restart")),
            _route("/reload", POST=self.reload),
            _route("/healthz", GET=self.healthz),
            _route("/readyz", GET=self.readyz),
            _route("/metrics", GET=self.metrics),
            _route("/openapi.json", GET=self.openapi),
            *more,
        ]

    async def list_agents(self, request: Request) -> Response:
        offset = wall_offset()
        return JSONResponse({"agents": [agent_json(s, offset) for s in self.sup.slots.values()]})

    async def get_agent(self, request: Request) -> Response:
        return _agent_answer(self._slot(request.path_params["id"]))

    async def load(self, request: Request) -> Response:
        self.guard.check(request)
        table = await read_json_object(request)
        return _agent_answer(await self._ask(self.sup.load(table)), status_code=201)

    async def unload(self, request: Request) -> Response:
        self.guard.check(request)
        agent_id = request.path_params["id"]
        await self._ask(self.sup.unload(agent_id))
        return JSONResponse({"unloaded": agent_id})

    async def control(self, action: str, request: Request) -> Response:
        self.guard.check(request)
        do = {"start": self.sup.start, "stop": self.sup.stop, "restart": self.sup.restart}
        return _agent_answer(await self._ask(do[action](request.path_params["id"])))

    async def reload(self, request: Request) -> Response:
        self.guard.check(request)
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
        # Negotiated like prometheus-client's own handlers: OpenMetrics when asked for.
        encode, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encode(self.registry), headers={"content-type": content_type})

    async def openapi(self, request: Request) -> Response:
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


def _agent_answer(slot: Slot, status_code: int = 200) -> JSONResponse:
    return JSONResponse(agent_json(slot, wall_offset()), status_code=status_code)


def _route(path: str, **handlers: Endpoint) -> Route:
    """One route per path, dispatching on the method: with one route per method,
    Starlette's 405 would list only the first route's methods in ``Allow``."""

    async def dispatch(request: Request) -> Response:
        return await handlers["GET" if request.method == "HEAD" else request.method](request)

    return Route(path, dispatch, methods=list(handlers))


class CountRequests:
    """ASGI middleware counting requests by route template, method and status code.

    Labels stay bounded whatever clients send: unknown paths count as ``unmatched``,
    unusual methods as ``OTHER``.
    """

    METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute], counts: RequestCounts) -> None:
        self.app = app
        self.routes = routes
        self.counts = counts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # what the client gets if the app raises before answering

        async def send_counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        finally:
            method = scope["method"] if scope["method"] in self.METHODS else "OTHER"
            self.counts[(self._route(scope), method, str(status))] += 1

    def _route(self, scope: Scope) -> str:
        for route in self.routes:
            match, _ = route.matches(scope)
            if match is not Match.NONE and isinstance(route, Route):
                return route.path
        return "unmatched"


def build_app(sup: Supervisor, guard: Guard) -> ASGIApp:
    """The ASGI app for `sup`, refusing changes as `guard` says."""
    requests: RequestCounts = Counter()
    api = ControlApi(sup, guard, requests)
    routes = api.routes()
    app = Starlette(
        routes=routes,
        middleware=[Middleware(CountRequests, routes=routes, counts=requests)],
        exception_handlers=EXCEPTION_HANDLERS,
    )
    # Outside Starlette's own error handling, so that a 500 answer drains too.
    return DrainUnreadBody(app)


# -- serving ------------------------------------------------------------------------


async def serve_api(
    sup: Supervisor, address: str, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve the control API for `sup` on `address` until cancelled.

    Calls ``task_status.started(bound)`` once listening, with the address actually bound
    in the same syntax (``"127.0.0.1:43125"`` for ``"127.0.0.1:0"``, ``"unix:/run/s.sock"``).

    Cancelling it shuts down gracefully: it stops accepting connections, gives requests
    in flight up to `GRACE` seconds, removes its unix socket, then lets the cancellation
    propagate.

    Raises:
      ApiConfigError: before `started`: a bad address, an unreadable token file, or the
        address cannot be bound.
    """
    listen = parse_address(address)
    guard = Guard(token=api_token(sup.manifest.settings), local=listen.local, address=address)
    app = build_app(sup, guard)
    sock = bind(listen, address)
    stop = trio.Event()
    # The server runs shielded so that a cancel reaches it as a graceful stop (`stop`),
    # not as a cancellation of every request in flight; the shield's deadline bounds it.
    shield = trio.CancelScope(shield=True)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(_serve, app, sock, stop, shield)
            try:
                bound = bound_address(sock)
                log.info("API on %s (%s)", bound, guard.note())
                task_status.started(bound)
                await trio.sleep_forever()
            finally:
                stop.set()
                shield.deadline = trio.current_time() + GRACE + 1.0
    finally:
        sock.close()
        if listen.path is not None:
            listen.path.unlink(missing_ok=True)


async def _serve(
    app: ASGIApp,
    sock: socket.socket,
    stop: trio.Event,
    shield: trio.CancelScope,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """hypercorn's trio worker on `sock`, until `stop` is set or `shield` runs out.

    (`hypercorn.trio.serve` binds its own sockets; binding here first keeps a failed
    bind a plain error, and the socket ours to close.)
    """
    config = Config()
    config.errorlog = _http_log
    config.accesslog = None
    config.graceful_timeout = GRACE
    sockets = Sockets(secure_sockets=[], insecure_sockets=[sock], quic_sockets=[])
    with shield:
        await worker_serve(
            wrap_app(app, config.wsgi_max_body_size, "asgi"),  # type: ignore[arg-type]
            config,
            sockets=sockets,
            shutdown_trigger=stop.wait,
            task_status=task_status,
        )
