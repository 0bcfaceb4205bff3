"""etcd's JSON gateway, the wire format: what its answers mean, as Python values.

etcd serves its gRPC API as JSON over HTTP too (the grpc-gateway): unary calls are a
POST each, and streams (watch) answer one JSON object per line. Keys and values travel
base64-encoded; 64-bit numbers travel as strings; proto3 JSON leaves out every field at
its default (0, empty). This module turns that into `KeyValue`s, `Event`s and the
store's errors; `etcd.py` makes the calls, `watchstream.py` reads the watch's stream.
"""

from __future__ import annotations

import base64
from typing import Any, Literal

import attrs
import httpx

from supervisor.cluster import Compacted, Refused, Unavailable

UNAUTHENTICATED = 16  # gRPC's code for a missing, stale or invalid auth token


class EtcdUnavailable(Unavailable):
    """No endpoint answered in time (refused, unreachable, or too slow)."""


class EtcdError(Refused):
    """etcd answered, with an error (`code` is its gRPC status code)."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


class WatchCompacted(Compacted):
    """The watch's start revision was compacted away: read the keys again."""


@attrs.frozen
class KeyValue:
    key: str
    value: bytes
    lease: int
    create_revision: int
    mod_revision: int


@attrs.frozen
class Event:
    """One change seen by a watch; `kv.value` is empty for a delete."""

    type: Literal["put", "delete"]
    kv: KeyValue


def b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


def prefix_end(prefix: str) -> str:
    """The key just past every key that starts with `prefix` (etcd's `range_end`).

    Namespaces here end in "/" and are ASCII, so bumping the last character is exact.
    """
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def key_value(raw: dict[str, Any]) -> KeyValue:
    # proto3 JSON leaves out fields at their default (0, empty): hence every .get.
    return KeyValue(
        key=base64.b64decode(raw.get("key", "")).decode(),
        value=base64.b64decode(raw.get("value", "")),
        lease=int(raw.get("lease", 0)),
        create_revision=int(raw.get("create_revision", 0)),
        mod_revision=int(raw.get("mod_revision", 0)),
    )


def revision_of(answer: dict[str, Any]) -> int:
    return int(answer.get("header", {}).get("revision", 0))


def decode(answer: httpx.Response) -> Any:
    try:
        body = answer.json()
    except ValueError:
        body = {}
    if answer.status_code != 200:
        message = body.get("message") or body.get("error") or answer.text[:200]
        raise EtcdError(f"etcd: {message}", int(body.get("code", 0)))
    return body


def why(exc: BaseException) -> str:
    """`exc` for a log line; httpx's own errors are often empty, their cause is not
    (a TLS certificate refused, a connection refused)."""
    while not str(exc) and (exc.__cause__ or exc.__context__) is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return repr(exc)
