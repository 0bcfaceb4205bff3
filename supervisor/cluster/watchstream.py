"""etcd's watch stream: one POST whose answer never ends, read line by line.

A plain HTTP/1.1 exchange over a trio TCP (or TLS) stream, framed by h11, rather than
httpx's streaming: httpx reads a stream through nested async generators, and leaving one
early, as a watch always does, leaves them to the garbage collector. The gateway sends
one JSON object per line; `_batches` turns them into the `Event`s of each revision.
"""

from __future__ import annotations

import json
import ssl
import urllib.parse
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing, asynccontextmanager
from typing import Any

import h11
import httpx
import trio

from supervisor.cluster.gateway import (
    EtcdError,
    EtcdUnavailable,
    Event,
    WatchCompacted,
    b64,
    decode,
    key_value,
    prefix_end,
)


@asynccontextmanager
async def open_watch(
    url: str,
    prefix: str,
    start_revision: int,
    *,
    head_within: float,
    tls: ssl.SSLContext | None = None,
    headers: dict[str, str] | None = None,
) -> AsyncIterator[AsyncIterator[list[Event]]]:
    """Watch every key under `prefix` from `start_revision` on, at `url` (an endpoint's
    ``/v3/watch``); yield the event batches once etcd has confirmed the watch.

    Raises:
      OSError, trio.TooSlowError, trio.BrokenResourceError, h11.ProtocolError,
        StopAsyncIteration: the exchange failed or the stream broke.
      WatchCompacted: `start_revision` is older than etcd keeps.
      EtcdError: etcd refused or cancelled the watch.
      EtcdUnavailable: etcd ended the stream.
    """
    request = {
        "create_request": {
            "key": b64(prefix),
            "range_end": b64(prefix_end(prefix)),
            "start_revision": str(start_revision),
        }
    }
    stream = _post_stream(url, request, head_within=head_within, tls=tls, headers=headers)
    async with stream as chunks, aclosing(_lines(chunks)) as lines:
        first = _watch_result(await anext(lines))
        if not first.get("created", False):
            raise EtcdError(f"etcd did not create the watch: {first}")
        async with aclosing(_batches(lines)) as found:
            yield found


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
                decode(httpx.Response(answer.status_code, content=text))
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
            Event("delete" if raw.get("type") == "DELETE" else "put", key_value(raw["kv"]))
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
