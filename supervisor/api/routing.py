"""Routing helpers of the API: one route per path, and requests counted by route.

Shared by the app's routes (`supervisor.api.app`) and the cluster's (`supervisor.api.cluster`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from supervisor.api.metrics import RequestCounts

Endpoint = Callable[[Request], Awaitable[Response]]


def route(path: str, **handlers: Endpoint) -> Route:
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
            self.counts[(self._route_of(scope), method, str(status))] += 1

    def _route_of(self, scope: Scope) -> str:
        for route in self.routes:
            match, _ = route.matches(scope)
            if match is not Match.NONE and isinstance(route, Route):
                return route.path
        return "unmatched"
