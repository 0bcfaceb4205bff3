"""Request bodies in the control API: read them capped, and check them.

`read_json_object` reads a body as a JSON object no larger than `MAX_BODY`, and refuses
what parses but could not be stored in the TOML state file and shown as JSON again, so a
bad body answers 4xx with a clear message, never a 500 (docs/api.md). A body a route
leaves unread costs nothing: the server reads a body only when the app asks for it, and
closes the connection after the answer unless the rest of it had arrived
(`supervisor.api.http11`).
"""

from __future__ import annotations

import json
import math
from typing import Any

import trio
from starlette.requests import Request

from supervisor.api.errors import ApiError

MAX_BODY = 1024 * 1024  # bytes; larger request bodies get 413
MAX_DEPTH = 32  # nesting levels of a request body
BODY_TIMEOUT = 30.0  # seconds a whole body may take to arrive; slower gets 408


async def read_json_object(request: Request, limit: int = MAX_BODY) -> dict[str, Any]:
    """Read the body as a JSON object, refusing it as soon as it passes `limit` bytes.

    The value must also survive being written to the TOML state file and shown as JSON
    again: no NaN or infinities, integers within 64 bits, no lone surrogates, nesting at
    most `MAX_DEPTH` deep.

    Raises:
      ApiError: 413 too large, 408 not all there within `BODY_TIMEOUT`, 400 not valid
        JSON, 422 valid JSON that is not such an object.
    """
    with trio.move_on_after(BODY_TIMEOUT) as timer:
        data = await _read_capped(request, limit)
    if timer.cancelled_caught:
        raise ApiError(408, f"the request body did not arrive within {BODY_TIMEOUT:g}s")
    value = _parse(data)
    if not isinstance(value, dict):
        raise ApiError(422, f"request body must be a JSON object, not {_json_type(value)}")
    _check_storable(value)
    return value


async def _read_capped(request: Request, limit: int) -> bytes:
    """The whole body; ApiError (413) as soon as it passes `limit` bytes, without reading
    the rest, or at once when its Content-Length says it will."""
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
    return b"".join(chunks)


def _parse(body: bytes) -> Any:
    """The JSON value of `body`; ApiError (400) if it is not valid JSON or holds what TOML
    cannot: NaN, an infinity, an integer beyond 64 bits, a key given twice in an object
    (JSON would keep the last silently; the state file could not hold both)."""
    try:
        return json.loads(
            body,
            parse_constant=_no_constant,
            parse_float=_finite,
            parse_int=_int64,
            object_pairs_hook=_unique_keys,
        )
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError too
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"request body is larger than {limit} bytes ({limit // 1024} KiB)")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for key, value in pairs:
        if key in table:
            raise ValueError(f"the key {key!r} is given twice")
        table[key] = value
    return table


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
