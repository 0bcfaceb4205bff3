"""The rules every request passes before any route sees it (docs/api.md#who-may-do-what).

In order, each refusal answering JSON and reaching no route, so it changes nothing:

1. A path holding an encoded ``/`` (``%2F``) is 404: an id cannot hold one, and a proxy's
   rule for ``/agents/m`` must not be dodged by ``/agents/m%2Fstop``.
2. DNS rebinding: unless the user set the token, a TCP API serves only requests whose
   ``Host`` is a loopback name or address (421 otherwise). The public routes answer any
   ``Host``, for probes.
3. CSRF: a changing request (POST, PUT, PATCH, DELETE) from a web page of another site
   (``Sec-Fetch-Site: cross-site`` or ``same-site``, or an ``Origin`` other than the
   API's own) is 403, and one whose body is not ``application/json`` is 415, so no
   "simple request" a page can send without a preflight is ever obeyed.
4. The token (`Guard`), for every route but the public ones.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from supervisor.api.access import Guard, is_loopback
from supervisor.api.errors import ApiError, error_answer

# Routes anyone who can reach the API may GET: they hold no agent's data (probes and
# scrapers send no token, and a pod's probe names the pod's address as Host).
PUBLIC = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json", "/"})
CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class RequestRules:
    """ASGI middleware applying the rules above to every HTTP request."""

    def __init__(self, app: ASGIApp, guard: Guard) -> None:
        self.app = app
        self.guard = guard
        self.check_host = not guard.address.startswith("unix:") and not guard.configured

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            try:
                self.check(scope)
            except ApiError as exc:
                await error_answer(Request(scope), exc)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def check(self, scope: Scope) -> None:
        """Raises ApiError unless the request in `scope` may reach a route."""
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        if b"%2f" in raw_path.lower():
            raise ApiError(404, f"no route {scope['path']}: an id cannot hold '/'")
        headers: Mapping[str, str] = Request(scope).headers
        method = scope["method"]
        public = scope["path"] in PUBLIC and method in ("GET", "HEAD")
        host = headers.get("host", "")
        if self.check_host and not public and not is_loopback(_host_name(host)):
            raise ApiError(
                421,
                f"Host {host!r} is not a loopback name: with no token set, this API "
                "answers only to localhost, 127.0.0.1 or [::1] (a DNS-rebinding guard); "
                "set $SUPERVISOR_TOKEN or [supervisor] api_token_file to serve other names",
            )
        if method in CHANGING:
            _check_same_origin(headers, host)
        if not public:
            self.guard.check_authorization(headers.get("authorization", ""))
        if method in CHANGING:
            _check_json_body(headers)


def _host_name(host: str) -> str:
    """The name in a ``Host`` value: ``[::1]:7070`` → ``::1``, ``localhost:80`` → ``localhost``."""
    if host.startswith("["):
        return host[1 : host.find("]")]
    return host.rpartition(":")[0] if ":" in host else host


def _check_same_origin(headers: Mapping[str, str], host: str) -> None:
    site = headers.get("sec-fetch-site", "").lower()
    if site in ("cross-site", "same-site"):
        raise ApiError(403, f"refused: a changing request from a web page ({site})")
    origin = headers.get("origin")
    if origin is not None and origin.partition("://")[2].lower() != host.lower():
        raise ApiError(403, f"refused: a changing request from another origin ({origin})")


def _check_json_body(headers: Mapping[str, str]) -> None:
    content_type = headers.get("content-type")
    has_body = headers.get("content-length", "0") != "0" or "transfer-encoding" in headers
    if content_type is None and not has_body:
        return
    media = (content_type or "").partition(";")[0].strip().lower()
    if media != "application/json":
        raise ApiError(
            415,
            f"a request body must be application/json, not {content_type or 'untyped'}",
            headers={"Accept-Post": "application/json"},
        )
