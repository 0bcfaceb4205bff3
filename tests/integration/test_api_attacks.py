"""The API against hostile clients: HTTP/2 abuse, CSRF, DNS rebinding, path tricks, slow
and stuck clients (docs/api.md#who-may-do-what, docs/api.md#limits).

Each test runs a real supervisor and `serve_api` on a real socket in the test's trio loop
(`open_api`): a failure that escaped the server would end the test's nursery.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import httpx
import pytest
import trio

from supervisor.api import server
from supervisor.api.tokenfile import read_token, runtime_dirs, token_path

from .test_api import AGENTS, JSON, open_api, read_to_end

LOAD = {"id": "b", "entry": f"{AGENTS}:idle"}


def h2_client() -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    return conn


def data_frame(stream_id: int, payload: bytes) -> bytes:
    """A raw DATA frame, sent whatever state the stream is in (h2 itself would refuse)."""
    return len(payload).to_bytes(3, "big") + b"\x00\x00" + stream_id.to_bytes(4, "big") + payload


async def h2_abuse(address: str, path: str, method: str) -> None:
    """HTTP/2 with prior knowledge: a request, then DATA on and on after any answer."""
    host, port = address.rsplit(":", 1)
    conn = h2_client()
    headers = [(":method", method), (":path", path), (":scheme", "http"), (":authority", host)]
    conn.send_headers(1, [*headers, ("content-type", "application/json")])
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        try:
            await stream.send_all(conn.data_to_send())
            for _ in range(200):
                await stream.send_all(data_frame(1, b"x" * 1000))
            # and a rapid reset: streams opened and cancelled at once, many of them
            for stream_id in range(3, 2003, 2):
                conn.send_headers(stream_id, headers, end_stream=True)
                conn.reset_stream(stream_id)
            await stream.send_all(conn.data_to_send())
            while await stream.receive_some():
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # closed on us: fine


@pytest.mark.parametrize(
    ("path", "method"),
    [("/healthz", "GET"), ("/agents", "POST"), ("/agents", "GET"), ("/nope", "GET")],
)
async def test_http2_abuse_cannot_stop_the_api(tmp_path: Path, path: str, method: str) -> None:
    with trio.fail_after(20):
        async with open_api(tmp_path) as api:
            for _ in range(3):
                await h2_abuse(api.address, path, method)
            assert (await api.http.get("/healthz")).status_code == 200
            assert api.slot_state("a") == "running"


async def test_h2c_upgrade_is_answered_in_http_1_1(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with open_api(tmp_path) as api:
            headers = {"Upgrade": "h2c", "Connection": "Upgrade, HTTP2-Settings"}
            r = await api.http.get("/healthz", headers={**headers, "HTTP2-Settings": ""})
            assert (r.status_code, r.http_version) == (200, "HTTP/1.1")


async def test_connections_over_the_limit_wait_and_slow_heads_are_dropped(
    tmp_path: Path,
) -> None:
    limit = server.connection_limit()
    with trio.fail_after(30):
        async with open_api(tmp_path) as api:
            host, port = api.address.rsplit(":", 1)
            idle = [await trio.open_tcp_stream(host, int(port)) for _ in range(limit + 20)]
            # slowloris: a head that never ends, a byte at a time
            for s in idle:
                await s.send_all(b"GET /healthz HTTP/1.1\r\n")
            # all of them are closed within the head timeout; then the API serves again
            for s in idle:
                with trio.fail_after(server.HEAD_TIMEOUT * 4):
                    try:
                        while await s.receive_some():
                            pass
                    except trio.BrokenResourceError:
                        pass
                await s.aclose()
            assert (await api.http.get("/healthz")).status_code == 200


async def test_a_client_that_stops_reading_is_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server, "WRITE_TIMEOUT", 0.5)
    toml = "".join(f'[agents.a{i}]\nentry = "{AGENTS}:idle"\n' for i in range(300))
    with trio.fail_after(30):
        async with open_api(tmp_path, toml) as api:
            host, port = api.address.rsplit(":", 1)
            token = read_token(int(port))
            stuck = await trio.open_tcp_stream(host, int(port))
            stuck.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 4096)
            request = f"GET /agents HTTP/1.1\r\nHost: {api.address}\r\n"
            request += f"Authorization: Bearer {token}\r\n\r\n"
            await stuck.send_all((request * 50).encode())  # pipelined, not read yet
            # Past the write timeout (nothing on the server side to wait on instead):
            await trio.sleep(server.WRITE_TIMEOUT * 3)
            assert (await api.http.get("/healthz")).status_code == 200
            got = await read_to_end(stuck)
            await stuck.aclose()
            # Dropped part way: far fewer than the 50 answers asked for.
            assert got.count(b"HTTP/1.1 200 ") < 25


# -- CSRF, DNS rebinding, paths -----------------------------------------------------


async def test_web_pages_cannot_change_anything(tmp_path: Path) -> None:
    """What a page in a browser can send without a preflight is refused, token or not."""
    refused = [
        ({"content-type": "text/plain"}, 415),
        ({"content-type": "application/x-www-form-urlencoded"}, 415),
        ({"content-type": "multipart/form-data; boundary=x"}, 415),
        ({"origin": "http://127.0.0.1:1", **JSON}, 403),
        ({"origin": "null", **JSON}, 403),
        ({"sec-fetch-site": "cross-site", **JSON}, 403),
        ({"sec-fetch-site": "same-site", **JSON}, 403),
    ]
    with trio.fail_after(10):
        async with open_api(tmp_path) as api:
            body = json.dumps(LOAD).encode()
            for headers, status in refused:
                r = await api.http.post("/agents", content=body, headers=headers)
                assert (r.status_code, "b" in api.sup.slots) == (status, False), headers
                r = await api.http.post("/agents/a/stop", headers=headers)
                assert r.status_code == (403 if status == 403 else 415), headers
            assert api.slot_state("a") == "running"
            untyped = await api.http.post("/agents", content=body)
            assert untyped.status_code == 415
            same = {"origin": f"http://{api.address}", "sec-fetch-site": "same-origin", **JSON}
            r = await api.http.post("/agents", content=body, headers=same)
            assert r.status_code == 201, r.text
            r = await api.http.post("/agents/a/stop", headers={"sec-fetch-site": "none"})
            assert r.status_code == 200


async def test_only_loopback_host_names_are_served_without_a_set_token(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with open_api(tmp_path) as api:
            port = api.address.rsplit(":", 1)[1]
            for host in [f"localhost:{port}", f"127.0.0.1:{port}", "127.9.9.9", f"[::1]:{port}"]:
                r = await api.http.get("/agents", headers={"host": host})
                assert r.status_code == 200, host
            for host in [f"evil.example:{port}", "localhost.evil.example", "10.0.0.1", ""]:
                r = await api.http.get("/agents", headers={"host": host})
                assert r.status_code == 421, host
                assert "DNS-rebinding" in r.json()["error"]
                r = await api.http.post("/reload", headers={"host": host})
                assert r.status_code == 421, host
                # probes name the pod's address: the public routes answer any Host
                assert (await api.http.get("/healthz", headers={"host": host})).status_code == 200


async def test_with_a_set_token_any_host_is_served(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("s3cret")
    (tmp_path / "token").chmod(0o600)
    toml = f'[supervisor]\napi_token_file = "token"\n[agents.a]\nentry = "{AGENTS}:idle"\n'
    with trio.fail_after(10):
        async with open_api(tmp_path, toml, headers={"authorization": "Bearer s3cret"}) as api:
            r = await api.http.get("/agents", headers={"host": "supervisor.example.com"})
            assert r.status_code == 200  # behind a proxy


async def test_no_redirect_and_no_encoded_slash(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with open_api(tmp_path) as api:
            r = await api.http.post("/reload/", headers={"host": "127.0.0.1:1"})
            assert (r.status_code, "location" in r.headers) == (404, False)
            for path in ["/agents/a%2Fstop", "/agents/a%2fstop", "/agents/x%2F..%2Freload"]:
                r = await api.http.post(path)
                assert r.status_code == 404, path
            assert api.slot_state("a") == "running"
            assert (await api.http.get("/agents/a%2F")).status_code == 404


async def test_reads_need_the_token_on_tcp(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with open_api(tmp_path) as api:
            async with httpx.AsyncClient(base_url=f"http://{api.address}") as bare:
                for path in ["/agents", "/agents/a"]:
                    assert (await bare.get(path)).status_code == 401
                for path in ["/healthz", "/readyz", "/metrics", "/openapi.json"]:
                    assert (await bare.get(path)).status_code == 200, path
                assert (await bare.post("/agents", json=LOAD)).status_code == 401
            assert "b" not in api.sup.slots


async def test_the_token_file_is_private_and_removed_on_exit(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with open_api(tmp_path) as api:
            port = int(api.address.rsplit(":", 1)[1])
            (path,) = [p for d in runtime_dirs() if (p := token_path(port, d)).exists()]
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
            assert path.stat().st_uid == os.geteuid()
            api.cancel_api.cancel()
            with trio.fail_after(5):
                while path.exists():  # noqa: ASYNC110
                    await trio.sleep(0.01)


async def test_a_token_less_unix_socket_is_private(tmp_path: Path) -> None:
    sock = tmp_path / "api.sock"
    with trio.fail_after(10):
        async with open_api(tmp_path, address=f"unix:{sock}") as api:
            assert stat.S_IMODE(sock.stat().st_mode) == 0o600
            r = await api.http.post("/agents", json=LOAD, headers={"host": "anything"})
            assert r.status_code == 201


async def test_a_body_that_never_ends_gets_408(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from supervisor.api import body

    monkeypatch.setattr(body, "BODY_TIMEOUT", 0.5)
    with trio.fail_after(10):
        async with open_api(tmp_path) as api:
            host, port = api.address.rsplit(":", 1)
            stream = await trio.open_tcp_stream(host, int(port))
            head = (
                f"POST /agents HTTP/1.1\r\nHost: {api.address}\r\n"
                f"Authorization: Bearer {read_token(int(port))}\r\n"
                "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
            )
            async with stream:
                await stream.send_all(head.encode())
                answer = b""
                while chunk := await stream.receive_some():
                    answer += chunk
            assert answer.startswith(b"HTTP/1.1 408 "), answer
            assert "b" not in api.sup.slots
