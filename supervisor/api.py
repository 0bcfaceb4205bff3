"""The HTTP control API (SPEC §6): Starlette on hypercorn's trio worker.

The API changes nothing itself. Reads (`GET /agents`, `/readyz`, `/metrics`) look at
`Supervisor.slots` directly: they are sync, and the table only changes between the
owner's awaits. Every change (load, unload, start, stop, restart, reload) is a request to
the owner, which answers it; so two loads of one id race in the owner's queue, not here,
and a client that goes away mid-request leaves the owner to finish or undo the work whole.

Errors are always JSON ``{"error": "..."}`` (plus ``"errors": [...]`` for located
manifest messages). A request the API refuses never reaches the owner, so it changes
nothing. An unexpected exception answers 500 and is logged: that is a bug.
"""

from __future__ import annotations

import errno
import hmac
import ipaddress
import json
import logging
import math
import os
import signal
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import trio
from hypercorn.config import Config, Sockets
from hypercorn.trio.run import worker_serve
from hypercorn.utils import wrap_app
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, choose_encoder
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from supervisor import manifest as mf
from supervisor.logs import log
from supervisor.manifest import ManifestError, Settings
from supervisor.metrics import RequestCounts, SupervisorCollector
from supervisor.slot import ExitRecord, Slot
from supervisor.supervisor import Conflict, NotFound, ShuttingDown, StartFailed, Supervisor

MAX_BODY = 1024 * 1024  # bytes; larger request bodies get 413
MAX_DEPTH = 32  # nesting levels of a request body
GRACE = 3.0  # seconds requests in flight get to finish when the API stops
BACKLOG = 128  # connections the kernel queues before we accept them
TOKEN_ENV = "SUPERVISOR_TOKEN"

# hypercorn's own messages ("Running on ...") repeat ours; keep its warnings and errors.
_http_log = logging.getLogger("supervisor.http")
_http_log.setLevel(logging.WARNING)


class ApiConfigError(Exception):
    """The API cannot start: a bad address, an unreadable token file, a failed bind."""


# -- address and token --------------------------------------------------------------


@attrs.frozen
class Listen:
    """Where to listen: a unix socket's `path`, or `host` and `port`; and whether only
    local clients can reach it (loopback or a unix socket)."""

    local: bool
    path: Path | None = None
    host: str = ""
    port: int = 0


def parse_address(address: str) -> Listen:
    """Parse ``"HOST:PORT"``, ``"[IPv6]:PORT"`` or ``"unix:/path"``.

    Raises:
      ApiConfigError: the address is not one of those forms.
    """
    if address.startswith("unix:"):
        path = address.removeprefix("unix:")
        if not path:
            raise ApiConfigError(f"API address {address!r}: a unix socket needs a path")
        return Listen(local=True, path=Path(path))
    host, sep, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ApiConfigError(
            f"API address {address!r}: expected HOST:PORT (like 127.0.0.1:7070), "
            'unix:/path/to.sock, or "" for no API'
        )
    return Listen(local=is_loopback(host), host=host, port=int(port))


def is_loopback(host: str) -> bool:
    """Whether `host` only accepts local connections. Other host names count as not:
    we would have to trust the resolver to say otherwise."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def api_token(settings: Settings) -> str | None:
    """The API token: ``$SUPERVISOR_TOKEN`` if set and not empty, else the content of
    `api_token_file` (stripped), else None.

    Raises:
      ApiConfigError: the token file cannot be read, or holds only whitespace.
    """
    token = os.environ.get(TOKEN_ENV, "").strip()
    if token:
        return token
    path = settings.api_token_file
    if path is None:
        return None
    try:
        token = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ApiConfigError(f"api_token_file {path}: cannot read it: {exc}") from None
    if not token:
        raise ApiConfigError(f"api_token_file {path}: the file is empty")
    return token


# -- errors -------------------------------------------------------------------------


class ApiError(Exception):
    """Answer `status` with ``{"error": message, **extra}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra or {}
        self.headers = headers


def _error(
    status: int, message: str, extra: dict[str, Any] | None = None, **kw: Any
) -> JSONResponse:
    return JSONResponse({"error": message, **(extra or {})}, status_code=status, **kw)


def _on_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    if exc.status == 403:  # a wrong token, or changes asked for over the network
        client = request.client.host if request.client and request.client.host else "local"
        log.warning("API: refused %s %s from %s: %s", request.method, request.url.path, client, exc)
    return _error(exc.status, exc.message, exc.extra, headers=exc.headers)


def _on_http_exception(request: Request, exc: Exception) -> Response:
    # Starlette's router raises these: 404 unknown route, 405 wrong method (with Allow).
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code == 404:
        message = f"no route {request.url.path}"
    elif exc.status_code == 405:
        # Starlette lists the methods from a set: sort them, for stable answers.
        allowed = ", ".join(sorted(m.strip() for m in headers.get("Allow", "").split(",")))
        headers["Allow"] = allowed
        message = f"{request.method} is not allowed on {request.url.path} (allowed: {allowed})"
    else:
        message = exc.detail
    return _error(exc.status_code, message, headers=headers)


def _on_unexpected(request: Request, exc: Exception) -> Response:
    # Starlette logs nothing and hypercorn logs after us; say which request it was.
    log.error("API %s %s failed: %r", request.method, request.url.path, exc)
    return _error(500, f"internal error: {exc!r}")


def _on_known(exc: Exception) -> ApiError:
    """Translate the owner's exceptions into answers."""
    if isinstance(exc, ManifestError):
        return ApiError(422, "; ".join(exc.errors), extra={"errors": exc.errors})
    if isinstance(exc, NotFound):
        return ApiError(404, str(exc))
    if isinstance(exc, Conflict):
        return ApiError(409, str(exc))
    if isinstance(exc, StartFailed):
        return ApiError(422, str(exc))
    assert isinstance(exc, ShuttingDown)
    return ApiError(503, str(exc))


_KNOWN = (ManifestError, NotFound, Conflict, StartFailed, ShuttingDown)


# -- access control -----------------------------------------------------------------


@attrs.frozen
class Guard:
    """Decides whether a request may change anything.

    With a token, it needs ``Authorization: Bearer <token>``. Without one, changes are
    served only when the API listens on loopback or a unix socket (`local`).
    """

    token: str | None
    local: bool
    address: str

    def check(self, request: Request) -> None:
        """Raises ApiError (401, 403) unless `request` may change things."""
        if self.token is None:
            if not self.local:
                raise ApiError(
                    403,
                    f"the API listens on {self.address} without a token, so it refuses "
                    f"changes: set ${TOKEN_ENV} or [supervisor] api_token_file, or listen "
                    "on 127.0.0.1 or a unix socket",
                )
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise ApiError(
                401,
                "this route needs Authorization: Bearer <token>",
                headers={"WWW-Authenticate": 'Bearer realm="supervisor"'},
            )
        # Headers arrive as latin-1 text; compare the bytes as sent, in constant time.
        if not hmac.compare_digest(given.strip().encode("latin-1"), self.token.encode()):
            raise ApiError(403, "wrong token")


# -- the AGENT shape ----------------------------------------------------------------


def wall_offset() -> float:
    """Add this to a trio time to get a wall time (seconds since the epoch)."""
    return time.time() - trio.current_time()


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


# -- request bodies -----------------------------------------------------------------


async def read_json_object(request: Request, limit: int = MAX_BODY) -> dict[str, Any]:
    """Read the body as a JSON object, refusing it as soon as it passes `limit` bytes.

    The value must also survive being written to the TOML state file and shown as JSON
    again: no NaN or infinities, integers within 64 bits, no lone surrogates, nesting at
    most `MAX_DEPTH` deep.

    Raises:
      ApiError: 413 too large, 400 not valid JSON, 422 valid JSON that is not such an
        object.
    """
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ApiError(400, "the client went away before sending the whole body")
        chunk = message.get("body", b"")
        more = message.get("more_body", False)
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    try:
        value = json.loads(
            b"".join(chunks), parse_constant=_no_constant, parse_float=_finite, parse_int=_int64
        )
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError too
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ApiError(422, f"request body must be a JSON object, not {_json_type(value)}")
    _check_storable(value)
    return value


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"request body is larger than {limit} bytes ({limit // 1024} KiB)")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"{text} is out of range")
    return value


def _int64(text: str) -> int:
    value = int(text)
    if not -(2**63) <= value < 2**63:
        raise ValueError(f"{text} does not fit in 64 bits (TOML's integers)")
    return value


def _json_type(value: Any) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def _check_storable(value: dict[str, Any]) -> None:
    """Raises ApiError (422) for values that parse but cannot be stored and shown."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ApiError(422, f"request body nests deeper than {MAX_DEPTH} levels")
        if isinstance(item, dict):
            stack.extend((k, depth) for k in item)
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
        elif isinstance(item, str):
            try:
                item.encode()
            except UnicodeEncodeError:
                raise ApiError(422, f"request body holds a lone surrogate in {item!r}") from None


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
        slot = self._slot(request.path_params["id"])
        return JSONResponse(agent_json(slot, wall_offset()))

    async def load(self, request: Request) -> Response:
        self.guard.check(request)
        table = await read_json_object(request)
        slot = await self._ask(self.sup.load(table))
        return JSONResponse(agent_json(slot, wall_offset()), status_code=201)

    async def unload(self, request: Request) -> Response:
        self.guard.check(request)
        agent_id = request.path_params["id"]
        await self._ask(self.sup.unload(agent_id))
        return JSONResponse({"unloaded": agent_id})

    async def control(self, action: str, request: Request) -> Response:
        self.guard.check(request)
        do = {"start": self.sup.start, "stop": self.sup.stop, "restart": self.sup.restart}
        slot = await self._ask(do[action](request.path_params["id"]))
        return JSONResponse(agent_json(slot, wall_offset()))

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
        except _KNOWN as exc:
            raise _on_known(exc) from None


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


class DrainUnreadBody:
    """ASGI middleware: while the last part of an answer is sent, read and drop whatever
    of the request body the app left unread (a refused upload, a body a route ignores).

    Why: hypercorn queues a request's body to the app (at most `max_app_queue_size`
    messages) and, when the answer is complete, queues an ``http.disconnect`` too. If
    the app stopped reading and the queue is full, that last put blocks forever, so the
    answer never completes and the connection hangs. Draining while the answer ends
    keeps the queue moving; hypercorn then closes the connection, since the request
    was not read to its end. Nothing is buffered.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body_done = False

        async def receive_tracked() -> Message:
            nonlocal body_done
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def send_draining(message: Message) -> None:
            last = message["type"] == "http.response.body" and not message.get("more_body")
            if not last or body_done:
                await send(message)
                return
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_drop_body, receive_tracked)
                await send(message)
                # hypercorn is done with this request: nothing more will be queued.
                nursery.cancel_scope.cancel()

        await self.app(scope, receive_tracked, send_draining)


async def _drop_body(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


def build_app(sup: Supervisor, guard: Guard) -> ASGIApp:
    """The ASGI app for `sup`, refusing changes as `guard` says."""
    requests: RequestCounts = Counter()
    api = ControlApi(sup, guard, requests)
    routes = api.routes()
    app = Starlette(
        routes=routes,
        middleware=[Middleware(CountRequests, routes=routes, counts=requests)],
        exception_handlers={
            ApiError: _on_api_error,
            HTTPException: _on_http_exception,
            Exception: _on_unexpected,
        },
    )
    # Outside Starlette's own error handling, so that a 500 answer drains too.
    return DrainUnreadBody(app)


# -- the OpenAPI document -----------------------------------------------------------


def _body(schema: dict[str, Any], media: str = "application/json") -> dict[str, Any]:
    return {"content": {media: {"schema": schema}}}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _answers(ok: tuple[str, str, str], *errors: int) -> dict[str, Any]:
    """Responses: the success (code, description, schema name), then error codes."""
    code, description, schema = ok
    out: dict[str, Any] = {code: {"description": description, **_body(_ref(schema))}}
    for status in errors:
        out[str(status)] = {"description": _ERROR_TEXT[status], **_body(_ref("Error"))}
    return out


_ERROR_TEXT = {
    400: "the body is not valid JSON",
    401: "a token is set and the request has no Authorization: Bearer header",
    403: "wrong token, or no token set and the API is not on loopback or a unix socket",
    404: "no agent has that id",
    409: "the id exists or is loading (POST), or is declared in the manifest (DELETE)",
    413: "the body is larger than 1 MiB",
    422: "invalid agent keys or manifest (located messages in `errors`), or failed to start",
    503: "the supervisor is shutting down",
}
_CHANGE = (401, 403, 503)  # what any route that changes something may answer
_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": mf.ID_PATTERN},
}
_BEARER: list[dict[str, list[str]]] = [{"bearer": []}]
_STRINGS = {"type": "array", "items": {"type": "string"}}


def _control(action: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": f"{action} an agent; answers once done (a start: once running or failed)",
            "operationId": f"{action}Agent",
            "parameters": [_ID],
            "security": _BEARER,
            "responses": _answers(("200", "the agent after the request", "Agent"), 404, *_CHANGE),
        }
    }


_AGENT_SCHEMA = {
    "type": "object",
    "required": [
        "id",
        "kind",
        "source",
        "state",
        "pid",
        "restarts",
        "since",
        "last_exit",
        "spec",
    ],
    "properties": {
        "id": {"type": "string"},
        "kind": {"enum": ["in-process", "process"]},
        "source": {"enum": ["manifest", "api"]},
        "state": {
            "enum": ["starting", "running", "backoff", "stopping", "stopped", "exited", "failed"]
        },
        "pid": {"type": ["integer", "null"]},
        "restarts": {"type": "integer", "minimum": 0},
        "since": {"type": "number", "description": "wall time of the last state change"},
        "last_exit": {"oneOf": [_ref("Exit"), {"type": "null"}]},
        "spec": {"type": "object", "description": "the agent's keys, as in the manifest"},
        "up": {"type": "boolean", "description": "running, or exited ok"},
        "status": {"type": "string", "description": "the agent's own one-line status"},
        "reason": {"type": "string", "description": "why it is in this state"},
    },
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "supervisor control API",
        "version": "1",
        "description": "Load, inspect and control the agents of a running supervisor.",
    },
    "paths": {
        "/agents": {
            "get": {
                "summary": "every agent",
                "operationId": "listAgents",
                "responses": _answers(("200", "the agents", "AgentList")),
            },
            "post": {
                "summary": "load an agent; answers once it is running",
                "operationId": "loadAgent",
                "security": _BEARER,
                "requestBody": {"required": True, **_body(_ref("LoadRequest"))},
                "responses": _answers(
                    ("201", "loaded and running", "Agent"), 400, 409, 413, 422, *_CHANGE
                ),
            },
        },
        "/agents/{id}": {
            "get": {
                "summary": "one agent",
                "operationId": "getAgent",
                "parameters": [_ID],
                "responses": _answers(("200", "the agent", "Agent"), 404),
            },
            "delete": {
                "summary": "unload an agent loaded over the API; answers after its cleanup",
                "operationId": "unloadAgent",
                "parameters": [_ID],
                "security": _BEARER,
                "responses": _answers(("200", "unloaded", "Unloaded"), 404, 409, *_CHANGE),
            },
        },
        "/agents/{id}/start": _control("start"),
        "/agents/{id}/stop": _control("stop"),
        "/agents/{id}/restart": _control("restart"),
        "/reload": {
            "post": {
                "summary": "reconcile with the manifest file; answers once converged",
                "operationId": "reload",
                "security": _BEARER,
                "responses": _answers(("200", "what changed", "ReloadResult"), 422, *_CHANGE),
            }
        },
        "/healthz": {
            "get": {
                "summary": "the supervisor's loop answers",
                "operationId": "healthz",
                "responses": _answers(("200", "alive", "Health")),
            }
        },
        "/readyz": {
            "get": {
                "summary": "every enabled agent running or exited ok",
                "operationId": "readyz",
                "responses": {
                    "200": {"description": "ready", **_body(_ref("Ready"))},
                    "503": {"description": "the agents not ready, and why", **_body(_ref("Ready"))},
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "operationId": "metrics",
                "responses": {
                    "200": {
                        "description": "Prometheus text format",
                        **_body({"type": "string"}, CONTENT_TYPE_PLAIN_0_0_4.split(";")[0]),
                    }
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "this document",
                "operationId": "openapi",
                "responses": {"200": {"description": "OpenAPI 3.1", **_body({"type": "object"})}},
            }
        },
    },
    "components": {
        "securitySchemes": {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "needed when a token is set ($SUPERVISOR_TOKEN or "
                "api_token_file); without one, changes are served on loopback or a unix "
                "socket only",
            }
        },
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error"],
                "properties": {"error": {"type": "string"}, "errors": _STRINGS},
            },
            "Exit": {
                "type": "object",
                "required": ["at"],
                "properties": {
                    "at": {"type": "number"},
                    "code": {"type": "integer"},
                    "signal": {"type": "string"},
                    "error": {"type": "string"},
                },
            },
            "Agent": _AGENT_SCHEMA,
            "AgentList": {
                "type": "object",
                "required": ["agents"],
                "properties": {"agents": {"type": "array", "items": _ref("Agent")}},
            },
            "LoadRequest": {
                "type": "object",
                "description": "an agent's keys, as in the manifest (see `supervisor schema`), "
                "and its id; `id` may be left out for a `path` agent",
                "properties": {
                    "id": {"type": "string", "pattern": mf.ID_PATTERN},
                    "entry": {"type": "string"},
                    "command": {"oneOf": [{"type": "string"}, _STRINGS]},
                    "path": {"type": "string"},
                },
                "additionalProperties": True,
            },
            "Unloaded": {
                "type": "object",
                "required": ["unloaded"],
                "properties": {"unloaded": {"type": "string"}},
            },
            "ReloadResult": {
                "type": "object",
                "required": ["started", "stopped", "restarted", "unchanged", "failed"],
                "properties": {
                    "started": _STRINGS,
                    "stopped": _STRINGS,
                    "restarted": _STRINGS,
                    "unchanged": _STRINGS,
                    "failed": {
                        "type": "object",
                        "additionalProperties": {"type": "string"},
                        "description": "{id: reason} of the agents that failed to start",
                    },
                },
            },
            "Health": {
                "type": "object",
                "required": ["ok"],
                "properties": {"ok": {"type": "boolean"}},
            },
            "Ready": {
                "type": "object",
                "required": ["ready", "not_ready"],
                "properties": {
                    "ready": {"type": "boolean"},
                    "not_ready": {"type": "object", "additionalProperties": {"type": "string"}},
                },
            },
        },
    },
}


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
                bound = _name(sock)
                log.info("API on %s (%s)", bound, _access_note(guard))
                task_status.started(bound)
                await trio.sleep_forever()
            finally:
                stop.set()
                shield.deadline = trio.current_time() + GRACE + 1.0
    finally:
        sock.close()
        if listen.path is not None:
            listen.path.unlink(missing_ok=True)


def bind(listen: Listen, address: str) -> socket.socket:
    """A listening socket for `listen`.

    A unix socket file left by a supervisor that is gone is replaced; one that still
    answers is not.

    Raises:
      ApiConfigError: the address cannot be bound (in use, no permission, no such host).
    """
    try:
        if listen.path is not None:
            _remove_stale_socket(listen.path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            target: Any = str(listen.path)
        else:
            family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            target = (listen.host, listen.port)
    except OSError as exc:
        raise ApiConfigError(f"API address {address}: cannot listen: {exc}") from None
    try:
        sock.bind(target)
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ApiConfigError(f"API address {address}: cannot listen: {exc}") from None
    return sock


def _remove_stale_socket(path: Path) -> None:
    if not path.is_socket():
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except ConnectionRefusedError:
            path.unlink()  # nobody listens: left behind by a supervisor that was killed
            return
    raise OSError(errno.EADDRINUSE, "another process answers on this socket")


def _name(sock: socket.socket) -> str:
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return f"unix:{name}"
    if sock.family == socket.AF_INET6:
        return f"[{name[0]}]:{name[1]}"
    return f"{name[0]}:{name[1]}"


def _access_note(guard: Guard) -> str:
    if guard.token is not None:
        return "changes need the token"
    if guard.local:
        return "no token: changes served to local clients only"
    return f"no token: changes refused; set ${TOKEN_ENV} or api_token_file to allow them"


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
