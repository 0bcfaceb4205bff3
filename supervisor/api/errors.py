"""What the control API answers when a request fails: always JSON, never a bare 500.

Every failure answers ``{"error": "..."}`` with its status (plus ``"errors": [...]``, the
located messages, when a manifest or an agent's keys are invalid). Three kinds of failure
reach the answer:

- `ApiError`, raised by the API itself (a refused token, a bad body, an unknown id) and
  by the owner's refusals once `refusal` has translated them;
- Starlette's `HTTPException`, which its router raises for unknown routes (404) and
  wrong methods (405);
- anything else, which is a bug: it answers 500 and is logged.

`EXCEPTION_HANDLERS` maps each kind to its handler, for the Starlette app.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ExceptionHandler

from supervisor.logs import log
from supervisor.manifest import ManifestError
from supervisor.owner import Conflict, NotFound, ShuttingDown, StartFailed, StateNotSaved


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


# -- the owner's refusals -----------------------------------------------------------

# What the owner raises when it refuses a request; `refusal` says what each answers.
REFUSALS = (ManifestError, NotFound, Conflict, StartFailed, StateNotSaved, ShuttingDown)


def refusal(exc: Exception) -> ApiError:
    """Translate one of the owner's `REFUSALS` into an answer."""
    if isinstance(exc, ManifestError):
        return invalid(exc)
    if isinstance(exc, NotFound):
        return ApiError(404, str(exc))
    if isinstance(exc, Conflict):
        return ApiError(409, str(exc))
    if isinstance(exc, StartFailed):
        return ApiError(422, str(exc))
    if isinstance(exc, StateNotSaved):  # the state file could not be written: nothing changed
        return ApiError(422, str(exc))
    assert isinstance(exc, ShuttingDown)
    return ApiError(503, str(exc))


def invalid(exc: ManifestError) -> ApiError:
    """422 for an invalid manifest or agent: its messages joined, and each in ``errors``."""
    return ApiError(422, "; ".join(exc.errors), extra={"errors": exc.errors})


# -- the handlers -------------------------------------------------------------------


def _answer(
    status: int, message: str, extra: dict[str, Any] | None = None, **kw: Any
) -> JSONResponse:
    return JSONResponse({"error": message, **(extra or {})}, status_code=status, **kw)


def error_answer(request: Request, exc: Exception) -> Response:
    """The answer to an `ApiError` (for middleware too, which answers outside Starlette's
    handlers)."""
    assert isinstance(exc, ApiError)
    if exc.status == 403:  # a wrong token, or changes asked for over the network
        client = request.client.host if request.client and request.client.host else "local"
        log.warning("API: refused %s %s from %s: %s", request.method, request.url.path, client, exc)
    return _answer(exc.status, exc.message, exc.extra, headers=exc.headers)


# The handlers are coroutine functions: Starlette runs any other in a worker thread (a
# thread, and anyio's trio backend with its TLS streams: OpenSSL) for every error.


async def _on_api_error(request: Request, exc: Exception) -> Response:
    return error_answer(request, exc)


async def _on_http_exception(request: Request, exc: Exception) -> Response:
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
    return _answer(exc.status_code, message, headers=headers)


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    # Starlette logs nothing and the server logs the traceback after us; say which
    # request it was.
    log.error("API %s %s failed: %r", request.method, request.url.path, exc)
    return _answer(500, f"internal error: {exc!r}")


EXCEPTION_HANDLERS: Mapping[Any, ExceptionHandler] = {
    ApiError: _on_api_error,
    HTTPException: _on_http_exception,
    Exception: _on_unexpected,
}
