"""Our HTTP/1.1 connection (`supervisor.api.http11`) over real sockets: keep-alive,
pipelining, heads in pieces, malformed requests, bodies, streams a client leaves, stop.

Each test runs a real supervisor and `serve_api` in the test's trio loop (`open_api`) and
speaks raw HTTP/1.1 to it, reading answers with h11's client side.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h11
import pytest
import trio

from supervisor.api import server
from supervisor.api.body import MAX_BODY
from supervisor.api.tokenfile import read_token

from .test_api import AGENTS, Api, open_api, read_to_end, wait_for
from .test_observe_load import connection_tasks

JSON_TYPE = "Content-Type: application/json"


@pytest.fixture(autouse=True)
def _no_token_from_outside(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SUPERVISOR_TOKEN", raising=False)


async def connect(api: Api) -> trio.SocketStream:
    host, port = api.address.rsplit(":", 1)
    return await trio.open_tcp_stream(host, int(port))


def head(api: Api, method: str, path: str, *extra: str) -> bytes:
    token = read_token(int(api.address.rsplit(":", 1)[1]))
    lines = [f"{method} {path} HTTP/1.1", f"Host: {api.address}", f"Authorization: Bearer {token}"]
    return ("\r\n".join([*lines, *extra]) + "\r\n\r\n").encode()


class Reader:
    """Answers read off a raw stream with h11's client side."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    async def event(self) -> Any:
        while (event := self.conn.next_event()) is h11.NEED_DATA:
            self.conn.receive_data(await self.stream.receive_some(65536))
        return event

    async def answer(self, method: str = "GET") -> tuple[int, dict[bytes, bytes], bytes]:
        """The next answer (to a request `method`): status, headers, body."""
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        if self.conn.our_state is h11.IDLE:  # keep h11's client in step with what we sent
            self.conn.send(h11.Request(method=method, target="/", headers=[("Host", "x")]))
            self.conn.send(h11.EndOfMessage())
        while isinstance(response := await self.event(), h11.InformationalResponse):
            pass
        assert isinstance(response, h11.Response), response
        body = b""
        while not isinstance(event := await self.event(), h11.EndOfMessage):
            body += event.data
        return response.status_code, dict(response.headers), body


async def test_pipelined_requests_are_answered_in_order_on_one_connection(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with open_api(tmp_path) as api, await connect(api) as stream:
            await stream.send_all(
                head(api, "GET", "/healthz")
                + head(api, "GET", "/agents/a")
                + head(api, "GET", "/nope")
            )
            reader = Reader(stream)
            assert (await reader.answer())[0] == 200
            status, headers, body = await reader.answer()
            assert (status, json.loads(body)["id"]) == (200, "a")
            assert b"date" in headers
            assert (await reader.answer())[0] == 404
            await stream.send_all(head(api, "HEAD", "/agents/a"))  # and the connection is kept
            status, headers, body = await reader.answer("HEAD")
            assert (status, body) == (200, b"")
            assert int(headers[b"content-length"]) > 0


async def test_a_head_in_many_pieces(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with open_api(tmp_path) as api, await connect(api) as stream:
            for byte in head(api, "GET", "/agents/a"):
                await stream.send_all(bytes([byte]))
                await trio.sleep(0.001)
            status, _, body = await Reader(stream).answer()
            assert (status, json.loads(body)["id"]) == (200, "a")


@pytest.mark.parametrize(
    ("request_bytes", "status", "says"),
    [
        (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Big: " + b"y" * 20000 + b"\r\n\r\n",
            431,
            "",
        ),
        (b"GET /healthz HTTP/1.1\r\n" + b"X-Many: y\r\n" * 2000 + b"\r\n", 431, ""),
        (b"GET /healthz\r\n\r\n", 400, "malformed request"),
        (b"GET /healthz HTTP/1.1\r\n\r\n", 400, "Host"),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n", 400, "malformed"),
        (b"POST /agents HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400, "malformed"),
        (b"GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n", 400, "malformed"),
    ],
)
async def test_malformed_requests_get_4xx_with_a_message_and_the_api_serves_on(
    tmp_path: Path, request_bytes: bytes, status: int, says: str
) -> None:
    with trio.fail_after(10):
        async with open_api(tmp_path) as api:
            async with await connect(api) as stream:
                try:
                    await stream.send_all(request_bytes)
                except trio.BrokenResourceError:
                    pass  # answered and closed before all of it was sent
                answer = await read_to_end(stream)
            first, _, rest = answer.partition(b"\r\n")
            assert first.startswith(f"HTTP/1.1 {status} ".encode()), answer[:200]
            error = json.loads(rest.partition(b"\r\n\r\n")[2])["error"]
            assert says in error
            assert b"connection: close" in rest.lower()
            assert (await api.http.get("/healthz")).status_code == 200


async def test_a_body_over_the_limit_is_refused_and_the_connection_closed(tmp_path: Path) -> None:
    body = b'{"id": "b", "x": "' + b"x" * MAX_BODY + b'"}'
    with trio.fail_after(20):
        async with open_api(tmp_path) as api:
            async with await connect(api) as stream:
                request = head(
                    api,
                    "POST",
                    "/agents",
                    "Content-Type: application/json",
                    "Transfer-Encoding: chunked",
                )
                chunked = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
                try:
                    await stream.send_all(request + chunked)
                except trio.BrokenResourceError:
                    pass
                answer = await read_to_end(stream)
            assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
            assert answer.count(b"HTTP/1.1") == 1
            assert "b" not in api.sup.slots


async def test_a_small_unread_body_keeps_the_connection(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with open_api(tmp_path) as api, await connect(api) as stream:
            ignored = (
                head(api, "POST", "/agents/a/restart", JSON_TYPE, "Content-Length: 5") + b"hello"
            )
            await stream.send_all(ignored + head(api, "GET", "/agents/a"))
            reader = Reader(stream)
            assert (await reader.answer("POST"))[0] == 200
            status, _, body = await reader.answer()
            assert (status, json.loads(body)["id"]) == (200, "a")


async def test_100_continue_goes_out_when_the_body_is_read(tmp_path: Path) -> None:
    load = json.dumps({"id": "b", "entry": f"{AGENTS}:idle"}).encode()
    with trio.fail_after(10):
        async with open_api(tmp_path) as api, await connect(api) as stream:
            extra = [JSON_TYPE, f"Content-Length: {len(load)}", "Expect: 100-continue"]
            await stream.send_all(head(api, "POST", "/agents", *extra))
            reader = Reader(stream)
            reader.conn.send(
                h11.Request(
                    method="POST",
                    target="/",
                    headers=[("Host", "x"), ("Content-Length", "1"), ("Expect", "100-continue")],
                )
            )
            interim = await reader.event()
            assert isinstance(interim, h11.InformationalResponse)
            assert interim.status_code == 100
            await stream.send_all(load)
            reader.conn.send(h11.Data(data=b"x"))
            reader.conn.send(h11.EndOfMessage())
            status, _, body = await reader.answer("POST")
            assert status == 201, body
            assert "b" in api.sup.slots


async def test_the_http2_preface_closes_the_connection(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with open_api(tmp_path) as api, await connect(api) as stream:
            await stream.send_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            assert await read_to_end(stream) == b""


async def test_a_client_leaving_a_stream_ends_it_at_once(tmp_path: Path) -> None:
    toml = f'[agents.a]\nentry = "{AGENTS}:idle"\n'
    with trio.fail_after(20):
        async with open_api(tmp_path, toml) as api:
            for path in ["/events", "/agents/a/logs?follow=true"]:
                stream = await connect(api)
                await stream.send_all(head(api, "GET", path))
                reader = Reader(stream)
                reader.conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
                reader.conn.send(h11.EndOfMessage())
                response = await reader.event()
                assert (response.status_code, path) == (200, path)
                await wait_for(lambda: connection_tasks() == 1)
                await stream.aclose()  # mid-response: the stream never ended
                await wait_for(lambda: connection_tasks() == 0)


async def test_stopping_the_api_finishes_answers_and_closes_idle_connections(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server, "HEAD_TIMEOUT", 60.0)  # so that only the stop closes it
    with trio.fail_after(20):
        async with open_api(tmp_path) as api:
            idle = await connect(api)
            await idle.send_all(head(api, "GET", "/healthz"))
            assert (await Reader(idle).answer())[0] == 200  # a kept-alive connection
            half = await connect(api)
            await half.send_all(b"GET /healthz HTTP/1.1\r\n")  # a head in progress
            await wait_for(lambda: connection_tasks() == 2)
            api.cancel_api.cancel()
            for stream in (idle, half):
                assert await read_to_end(stream) == b""
                await stream.aclose()
            await wait_for(lambda: connection_tasks() == 0)
