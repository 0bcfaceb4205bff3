"""A small etcd v3 client over its JSON gateway (``/v3/...``), with httpx on trio.

etcd serves its gRPC API as JSON over HTTP too (the grpc-gateway): unary calls are a
POST each, and streams (watch) answer one JSON object per line. That is all the
coordination needs (leases, transactions, ranges, watches), so no gRPC client is
needed. Keys and values travel base64-encoded; 64-bit numbers travel as strings.

Every call has a deadline and tries the endpoints in turn: a connection error or a
timeout on one moves on to the next. Calls that can be repeated safely are repeated
as is; the only one that is not naturally idempotent, the create transaction, reads the
key back when it loses, so a retried create that had in fact succeeded reports the key
as held by the caller's lease (see `EtcdClient.create`).
"""

from __future__ import annotations

import base64
import json
import ssl
import urllib.parse
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing, asynccontextmanager
from typing import Any, Literal

import attrs
import h11
import httpx
import trio

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


def _b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


def prefix_end(prefix: str) -> str:
    """The key just past every key that starts with `prefix` (etcd's `range_end`).

    Namespaces here end in "/" and are ASCII, so bumping the last character is exact.
    """
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def _kv(raw: dict[str, Any]) -> KeyValue:
    # proto3 JSON leaves out fields at their default (0, empty): hence every .get.
    return KeyValue(
        key=base64.b64decode(raw.get("key", "")).decode(),
        value=base64.b64decode(raw.get("value", "")),
        lease=int(raw.get("lease", 0)),
        create_revision=int(raw.get("create_revision", 0)),
        mod_revision=int(raw.get("mod_revision", 0)),
    )


def _revision(answer: dict[str, Any]) -> int:
    return int(answer.get("header", {}).get("revision", 0))


class EtcdClient:
    """Calls to one etcd cluster through any of its `endpoints` ("http://host:port", or
    "https://host:port" with `tls`).

    Args:
      endpoints: client URLs of the etcd members; calls try them in turn.
      timeout: how long one endpoint gets to answer a call, in seconds.
      tls: verifies etcd's certificate (and presents ours, if it holds one).
      user, password: etcd's authentication: a token is asked for before the first
        call, and again when etcd says it is no longer valid (it restarted, or the token
        expired).
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        timeout: float = 5.0,
        tls: ssl.SSLContext | None = None,
        user: str = "",
        password: str = "",
    ) -> None:
        if not endpoints:
            raise ValueError("no etcd endpoints")
        self.endpoints = tuple(e.rstrip("/") for e in endpoints)
        self.timeout = timeout
        self.tls = tls
        self.user, self._password = user, password
        self._token: str | None = None
        self._current = 0  # the endpoint that answered last; tried first
        self._http = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=128, max_keepalive_connections=64),
            verify=tls if tls is not None else True,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def call(self, path: str, body: dict[str, Any]) -> Any:
        """POST `body` to ``/v3/<path>`` and return the decoded answer.

        Each endpoint gets `timeout` seconds; callers that need a tighter bound wrap the
        call in a cancel scope (a cancelled call may or may not have taken effect).

        Raises:
          EtcdUnavailable: no endpoint answered in time.
          EtcdError: etcd refused the request (wrong credentials, no permission...).
        """
        if self.user and self._token is None:
            await self._authenticate()
        try:
            return await self._post(path, body, self._headers())
        except EtcdError as exc:
            if not self.user or exc.code != UNAUTHENTICATED:
                raise
        await self._authenticate()  # the token went stale: once more with a new one
        return await self._post(path, body, self._headers())

    async def _authenticate(self) -> None:
        self._token = None
        answer = await self._post(
            "auth/authenticate", {"name": self.user, "password": self._password}, {}
        )
        self._token = str(answer.get("token", ""))

    def _headers(self) -> dict[str, str]:
        return {"Authorization": self._token} if self._token else {}

    async def _post(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> Any:
        problems: list[str] = []
        for attempt in range(len(self.endpoints)):
            index = (self._current + attempt) % len(self.endpoints)
            url = f"{self.endpoints[index]}/v3/{path}"
            try:
                answer = await self._http.post(
                    url, json=body, headers=headers, timeout=self.timeout
                )
            except httpx.TransportError as exc:  # refused, reset, timed out, TLS refused
                problems.append(f"{self.endpoints[index]}: {_why(exc)}")
                continue
            self._current = index
            return _decode(answer)
        raise EtcdUnavailable("etcd unreachable: " + "; ".join(problems))

    # -- leases -----------------------------------------------------------------------

    async def grant(self, ttl: int) -> tuple[int, int]:
        """Grant a lease of `ttl` seconds; return (lease id, granted ttl)."""
        answer = await self.call("lease/grant", {"TTL": ttl})
        return int(answer["ID"]), int(answer["TTL"])

    async def keepalive(self, lease: int) -> int:
        """Refresh `lease`; return its new ttl in seconds, or 0 if it no longer exists.

        The gateway serves the keepalive stream one request per POST, which is all a
        periodic refresh needs.
        """
        answer = await self.call("lease/keepalive", {"ID": str(lease)})
        return int(answer.get("result", {}).get("TTL", 0))

    async def revoke(self, lease: int) -> None:
        """Revoke `lease`, deleting every key attached to it. A lease already gone is fine."""
        try:
            await self.call("lease/revoke", {"ID": str(lease)})
        except EtcdError as exc:
            if "not found" not in str(exc):
                raise

    # -- keys -------------------------------------------------------------------------

    async def range_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        """Every key under `prefix`, and the revision they were read at."""
        body = {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix))}
        answer = await self.call("kv/range", body)
        return [_kv(kv) for kv in answer.get("kvs", [])], _revision(answer)

    async def get(self, key: str) -> KeyValue | None:
        answer = await self.call("kv/range", {"key": _b64(key)})
        kvs = answer.get("kvs", [])
        return _kv(kvs[0]) if kvs else None

    async def put(self, key: str, value: bytes, lease: int = 0) -> KeyValue | None:
        """Set `key`; return what it held before, if anything."""
        body = {"key": _b64(key), "value": _b64(value), "lease": str(lease), "prev_kv": True}
        answer = await self.call("kv/put", body)
        prev = answer.get("prev_kv")
        return _kv(prev) if prev else None

    async def create(
        self,
        key: str,
        value: bytes,
        lease: int = 0,
        *,
        also: Sequence[tuple[str, bytes, int]] = (),
    ) -> tuple[bool, KeyValue | None]:
        """Create `key` only if it is absent (one compare-and-swap transaction), and with
        it the keys of `also` (key, value, lease), in the same transaction.

        Returns (created, existing): ``(True, None)`` when this call created it, else
        ``(False, kv)`` with the key as it is. A caller holding a lease should also treat
        ``kv.lease == lease`` as its own: a retry of a create that went through.
        """
        puts = [(key, value, lease), *also]
        body = {
            "compare": [{"target": "CREATE", "key": _b64(key), "create_revision": "0"}],
            "success": [
                {"request_put": {"key": _b64(k), "value": _b64(v), "lease": str(lease_id)}}
                for k, v, lease_id in puts
            ],
            "failure": [{"request_range": {"key": _b64(key)}}],
        }
        answer = await self.call("kv/txn", body)
        if answer.get("succeeded", False):
            return True, None
        kvs = answer["responses"][0]["response_range"].get("kvs", [])
        return False, (_kv(kvs[0]) if kvs else None)

    async def delete(self, key: str) -> bool:
        """Delete `key`; return whether it existed."""
        answer = await self.call("kv/deleterange", {"key": _b64(key)})
        return int(answer.get("deleted", 0)) > 0

    async def delete_if_value(self, key: str, value: bytes) -> bool:
        """Delete `key` only while it holds `value`; return whether it did."""
        body = {
            "compare": [{"target": "VALUE", "key": _b64(key), "value": _b64(value)}],
            "success": [{"request_delete_range": {"key": _b64(key)}}],
            "failure": [],
        }
        answer = await self.call("kv/txn", body)
        return bool(answer.get("succeeded", False))

    async def delete_if_lease(self, key: str, lease: int) -> bool:
        """Delete `key` only while it is attached to `lease`; return whether it was."""
        body = {
            "compare": [{"target": "LEASE", "key": _b64(key), "lease": str(lease)}],
            "success": [{"request_delete_range": {"key": _b64(key)}}],
            "failure": [],
        }
        answer = await self.call("kv/txn", body)
        return bool(answer.get("succeeded", False))

    # -- watch ------------------------------------------------------------------------

    @asynccontextmanager
    async def watch(
        self, prefix: str, start_revision: int
    ) -> AsyncIterator[AsyncIterator[list[Event]]]:
        """Watch every key under `prefix` from `start_revision` on.

        Yields an async iterator of event batches, in revision order, once etcd has
        confirmed the watch. The stream has no read deadline: it waits as long as
        nothing changes, so the caller bounds it (a dead connection is noticed by the
        lease keepalive, which goes the same way).

        Raises:
          EtcdUnavailable: no endpoint accepted the watch, or the stream broke.
          WatchCompacted: `start_revision` is older than etcd keeps.
          EtcdError: etcd refused or cancelled the watch.
        """
        request = {
            "create_request": {
                "key": _b64(prefix),
                "range_end": _b64(prefix_end(prefix)),
                "start_revision": str(start_revision),
            }
        }
        endpoint = self.endpoints[self._current]
        if self.user and self._token is None:
            await self._authenticate()
        stream = _post_stream(
            f"{endpoint}/v3/watch",
            request,
            head_within=self.timeout,
            tls=self.tls,
            headers=self._headers(),
        )
        try:
            async with (
                stream as chunks,
                aclosing(_lines(chunks)) as lines,
            ):
                first = _watch_result(await anext(lines))
                if not first.get("created", False):
                    raise EtcdError(f"etcd did not create the watch: {first}")
                async with aclosing(_batches(lines)) as batches:
                    yield batches
        except EtcdError as exc:
            if exc.code == UNAUTHENTICATED:
                self._token = None  # a new one for the next watch
            raise
        except (
            OSError,
            trio.TooSlowError,
            trio.BrokenResourceError,
            h11.ProtocolError,
            StopAsyncIteration,
        ) as exc:
            # Next time, try another endpoint: this one may be the problem.
            self._current = (self._current + 1) % len(self.endpoints)
            raise EtcdUnavailable(f"etcd watch on {endpoint} broke: {exc!r}") from None


@asynccontextmanager
async def _post_stream(
    url: str,
    body: dict[str, Any],
    *,
    head_within: float,
    tls: ssl.SSLContext | None = None,
    headers: dict[str, str] | None = None,
) -> AsyncIterator[AsyncIterator[bytes]]:
    """POST `body` as JSON and yield the answer's body as it arrives, chunk by chunk.

    A plain HTTP/1.1 exchange over a trio TCP stream (h11 does the framing), rather than
    httpx's streaming: httpx reads a stream through nested async generators, and leaving
    one early, as a watch always does, leaves them to the garbage collector. Connecting
    and the answer's head must come within `head_within` seconds; the body has no deadline.

    Raises:
      OSError, trio.TooSlowError, h11.ProtocolError: the exchange failed.
      EtcdError: etcd answered with an error status.
    """
    parts = urllib.parse.urlsplit(url)
    data = json.dumps(body).encode()
    conn = h11.Connection(h11.CLIENT)
    head = h11.Request(
        method="POST",
        target=parts.path,
        headers=[
            ("Host", parts.netloc),
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(data))),
            *(headers or {}).items(),
        ],
    )
    stream: trio.abc.Stream
    with trio.fail_after(head_within):
        host = parts.hostname or ""
        if parts.scheme == "https":
            context = tls or ssl.create_default_context()
            secure = await trio.open_ssl_over_tcp_stream(
                host, parts.port or 443, ssl_context=context
            )
            await secure.do_handshake()
            stream = secure
        else:
            stream = await trio.open_tcp_stream(host, parts.port or 80)
    async with stream:
        with trio.fail_after(head_within):
            await stream.send_all(
                conn.send(head) + conn.send(h11.Data(data=data)) + conn.send(h11.EndOfMessage())
            )
            answer = await _next_event(conn, stream)
        if not isinstance(answer, h11.Response):
            raise h11.RemoteProtocolError(f"expected an answer, got {answer!r}")
        async with aclosing(_body(conn, stream)) as chunks:
            if answer.status_code != 200:
                text = b"".join([chunk async for chunk in chunks])
                _decode(httpx.Response(answer.status_code, content=text))
            yield chunks


async def _next_event(conn: h11.Connection, stream: trio.abc.Stream) -> Any:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        conn.receive_data(bytes(await stream.receive_some(65536)))


async def _body(conn: h11.Connection, stream: trio.abc.Stream) -> AsyncGenerator[bytes, None]:
    while True:
        event = await _next_event(conn, stream)
        if isinstance(event, h11.Data):
            yield bytes(event.data)
        elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
            return


async def _lines(chunks: AsyncIterator[bytes]) -> AsyncGenerator[bytes, None]:
    """Split a byte stream into lines (the gateway sends one JSON object per line)."""
    pending = b""
    async for chunk in chunks:
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            if line.strip():
                yield line


async def _batches(lines: AsyncIterator[bytes]) -> AsyncGenerator[list[Event], None]:
    async for line in lines:
        result = _watch_result(line)
        events = [
            Event("delete" if raw.get("type") == "DELETE" else "put", _kv(raw["kv"]))
            for raw in result.get("events", [])
        ]
        if events:
            yield events
    raise EtcdUnavailable("etcd ended the watch stream")


def _watch_result(line: bytes) -> dict[str, Any]:
    message = json.loads(line)
    if "error" in message:
        error = message["error"]
        raise EtcdError(str(error.get("message", error)), int(error.get("code", 0)))
    result: dict[str, Any] = message.get("result", {})
    if int(result.get("compact_revision", 0)) > 0:
        raise WatchCompacted(f"watch start compacted (now at {result['compact_revision']})")
    if result.get("canceled", False):
        raise EtcdError(f"etcd cancelled the watch: {result.get('cancel_reason', '')}")
    return result


def _decode(answer: httpx.Response) -> Any:
    try:
        body = answer.json()
    except ValueError:
        body = {}
    if answer.status_code != 200:
        message = body.get("message") or body.get("error") or answer.text[:200]
        raise EtcdError(f"etcd: {message}", int(body.get("code", 0)))
    return body


def _why(exc: BaseException) -> str:
    """`exc` for a log line; httpx's own errors are often empty, their cause is not
    (a TLS certificate refused, a connection refused)."""
    while not str(exc) and (exc.__cause__ or exc.__context__) is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return repr(exc)
