"""The CLI's own HTTP/1.1 reading (`supervisor.cli.client`) against a real socket that
answers exactly the bytes a test gives: lengths, chunks, and broken answers."""

from __future__ import annotations

import json
import socket
import threading
import urllib.parse
from collections.abc import Iterator

import pytest

from supervisor import cli
from supervisor.cli.client import Api, ClientError, quote
from supervisor.cli.table import FIELDS


@pytest.fixture
def server() -> Iterator[tuple[Api, list[bytes], list[bytes]]]:
    """An Api on a loopback port whose server answers each connection with the next
    bytes put in `answers` (then closes), and keeps the request it read in `seen`."""
    answers: list[bytes] = []
    seen: list[bytes] = []
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                request = b""
                while b"\r\n\r\n" not in request:
                    data = conn.recv(65536)
                    if not data:
                        break
                    request += data
                seen.append(request)
                conn.sendall(answers.pop(0))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield Api(f"127.0.0.1:{port}", timeout=10), answers, seen
    finally:
        listener.shutdown(socket.SHUT_RDWR)  # wakes the accept (a close alone does not)
        thread.join(10)
        listener.close()


def test_a_body_of_known_length_and_the_request_sent(server) -> None:  # type: ignore[no-untyped-def]
    api, answers, seen = server
    answers.append(b'HTTP/1.1 200 OK\r\nContent-Length: 11\r\nX-A: b\r\n\r\n{"ok": true}junk')
    answer = api.request("POST", "/reload", {"x": 1})
    assert (answer.status, answer.body, answer.headers["X-A"]) == (200, b'{"ok": true', "b")
    head, _, _body = seen[0].partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /reload HTTP/1.1"
    assert f"Host: 127.0.0.1:{api.address.rpartition(':')[2]}" in lines
    assert "Content-Type: application/json" in lines
    assert "Connection: close" in lines


def test_chunks_are_joined_and_lines_cross_chunk_borders(server) -> None:  # type: ignore[no-untyped-def]
    api, answers, _ = server
    chunks = [b"event: a\ndata: o", b"ne\n\nda", b"ta: two\n\n"]
    body = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    answers.append(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
    with api.stream("GET", "/events") as response:
        assert list(response) == [b"event: a\n", b"data: one\n", b"\n", b"data: two\n", b"\n"]
    answers.append(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
    assert api.request("GET", "/x").body == b"".join(chunks)


def test_a_body_to_the_end_of_the_connection(server) -> None:  # type: ignore[no-untyped-def]
    api, answers, _ = server
    answers.append(b"HTTP/1.1 404 Not Found\r\n\r\n" + b"x" * 200_000)
    answer = api.request("GET", "/agents/nope")
    assert (answer.status, len(answer.body)) == (404, 200_000)


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b"SSH-2.0-OpenSSH_9.6\r\n", "cannot reach a supervisor"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "not a header line"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"y" * 70_000 + b"\r\n\r\n", "cut off or too long"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nshort", "broke off: the body is cut off"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "not a chunk size"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\nabc", "a chunk is cut off"),
        (b"", "cannot reach a supervisor"),
    ],
)
def test_a_broken_answer_is_a_client_error_not_a_traceback(server, raw: bytes, says: str) -> None:  # type: ignore[no-untyped-def]
    api, answers, _ = server
    answers.append(raw)
    with pytest.raises(ClientError, match=says) as caught:
        api.request("GET", "/agents")
    assert caught.value.code == 2


def test_nobody_listening_is_a_client_error() -> None:
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
    with pytest.raises(ClientError, match="cannot reach a supervisor"):
        Api(f"127.0.0.1:{port}", timeout=5).request("GET", "/agents")


def test_status_asks_for_its_columns_only(server, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The table reads a few keys of each agent, so it asks for those (no specs: most of
    a full answer's bytes and of the server's work); --json prints whole AGENTs."""
    api, answers, seen = server
    monkeypatch.setenv("SUPERVISOR_TOKEN", "t")
    agents = [
        {"id": "web", "kind": "process", "state": "running", "pid": 7, "restarts": 0,
         "since": 1.0, "cpu": 1.5, "rss": 4096, "last_exit": None, "status": "", "reason": "",
         "health": None, "blocked": None, "up": True, "spec": {"enabled": True}},
        {"id": "off", "kind": "process", "state": "stopped", "pid": None, "restarts": 0,
         "since": 1.0, "cpu": None, "rss": None, "last_exit": None, "status": "",
         "reason": "disabled", "health": None, "blocked": None, "up": False,
         "spec": {"enabled": False}},
    ]  # fmt: skip
    for answer in ({"agents": agents}, {"agents": agents}, agents[0]):
        body = json.dumps(answer).encode()
        answers.append(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    assert cli.main(["status", "--api", api.address]) == 0  # `off` is not meant to run
    rows = [row.split() for row in capsys.readouterr().out.splitlines()[1:]]
    assert [row[:3] for row in rows] == [["web", "process", "running"], ["off", "process", "disabled"]]  # fmt: skip
    assert cli.main(["status", "--json", "--api", api.address]) == 0
    assert json.loads(capsys.readouterr().out) == {"agents": agents}
    assert cli.main(["status", "web/1", "--api", api.address]) == 0
    assert [request.split(b"\r\n")[0].decode() for request in seen] == [
        f"GET /agents?fields={FIELDS} HTTP/1.1",
        "GET /agents HTTP/1.1",
        f"GET /agents/web%2F1?fields={FIELDS} HTTP/1.1",
    ]


def test_a_host_name_is_resolved(server) -> None:  # type: ignore[no-untyped-def]
    api, answers, seen = server
    answers.append(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
    port = api.address.rpartition(":")[2]
    assert Api(f"localhost:{port}", timeout=10).request("GET", "/healthz").status == 200
    assert f"Host: localhost:{port}".encode() in seen[0]


@pytest.mark.parametrize("text", ["web", "../reload?", "a b/c%", "é€", "\x00\u202e", "-_.~", ""])
def test_ids_are_quoted_as_urllib_quotes_them(text: str) -> None:
    assert quote(text) == urllib.parse.quote(text, safe="")


def test_a_supervisor_that_does_not_answer_is_a_client_error_after_the_timeout() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:  # accepts (backlog), says nothing
        port = listener.getsockname()[1]
        with pytest.raises(ClientError, match=r"did not answer within 0\.2s") as caught:
            Api(f"127.0.0.1:{port}", timeout=0.2).request("GET", "/agents")
    assert caught.value.code == 2
