"""`/events` under load: a client whose socket is full, and 10,000 agents reloading.

A real supervisor and hypercorn in the test's trio loop (`open_api`), real TCP sockets. A
stuck client is a socket with a small receive buffer that never reads: the server's sends
to it fill the kernel's buffers, then block; the send timeout (`server.WRITE_TIMEOUT`,
shortened here) must drop it, ending its connection's task, while the owner and the other
clients go on.
"""

from __future__ import annotations

import gc
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio
import trio.lowlevel

from supervisor.api import server
from supervisor.events import HISTORY
from tests.integration.test_api import Api, open_api, wait_for
from tests.integration.test_observe import AGENTS, sse

CONNECTION_TASK = "supervisor.api.server.Server._connection"


@pytest.fixture(autouse=True)
def _no_token_from_outside(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SUPERVISOR_TOKEN", raising=False)


def connection_tasks() -> int:
    """The API's connection tasks alive in this trio run."""
    count = 0
    todo = [trio.lowlevel.current_root_task()]
    while todo:
        task = todo.pop()
        count += task.name == CONNECTION_TASK
        for nursery in task.child_nurseries:
            todo.extend(nursery.child_tasks)
    return count


@contextmanager
def stuck_subscriber(api: Api) -> Iterator[socket.socket]:
    """A client that asks for `/events` and then never reads (its window fills up)."""
    host, port = api.address.rsplit(":", 1)
    stuck = socket.socket()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: the window
    try:
        stuck.connect((host, int(port)))
        auth = api.http.headers.get("authorization", "")
        head = f"GET /events HTTP/1.1\r\nHost: {host}\r\nAuthorization: {auth}\r\n\r\n"
        stuck.sendall(head.encode())
        yield stuck
    finally:
        stuck.close()


def read_to_end(sock: socket.socket, deadline: float = 30.0) -> bytes:
    """Everything the server sent before it closed the connection."""
    sock.settimeout(deadline)
    data = bytearray()
    try:
        while chunk := sock.recv(1 << 20):
            data += chunk
    except ConnectionResetError:
        pass
    return bytes(data)


async def test_a_client_that_stops_reading_is_dropped_by_the_send_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server, "WRITE_TIMEOUT", 1.0)
    toml = f'[agents.a]\nentry = "{AGENTS}:talker"\nparams = {{lines = 0}}\n'
    with trio.fail_after(60):
        async with open_api(tmp_path, toml) as api:
            bus = api.sup.events
            with stuck_subscriber(api) as stuck:
                await wait_for(lambda: bus.history is not None)
                await wait_for(lambda: connection_tasks() == 1)
                # Big events, few enough that the history keeps them all (no cut-off by
                # falling behind): only the full socket stops this client.
                chunk = "x" * 65536
                for i in range(200):  # 13 MB, far more than the kernel buffers
                    bus.publish("reload", {"ok": False, "errors": [str(i), chunk]})
                    await trio.lowlevel.checkpoint()  # the stream writes what the socket takes
                assert bus.history is not None
                assert len(bus.history) < HISTORY
                # While its send is blocked, the owner and a reading client go on.
                async with sse(api.http, "/events") as stream:
                    await stream.until("snapshot")
                    assert (await api.http.post("/agents/a/restart")).status_code == 200
                    await stream.until("agent", id="a", state="running")
                    # the stuck connection's task ends once the send timeout passes
                    await wait_for(lambda: connection_tasks() == 1)
                    gc.collect()  # an unclosed stream generator would warn now (an error)
                    await trio.lowlevel.checkpoint()  # (trio finalizes it in the loop)
                # and the server closed its socket: what it holds is short of the 13 MB
                sent = await trio.to_thread.run_sync(read_to_end, stuck)
                assert len(sent) < 200 * 65536
                assert b"event: cutoff" not in sent


async def test_a_stuck_client_holds_one_connection_not_the_history(tmp_path: Path) -> None:
    """Without the send timeout passing, a stuck client costs its socket, nothing more:
    far more events than the history holds leave the history at its bound."""
    toml = f'[agents.a]\nentry = "{AGENTS}:talker"\nparams = {{lines = 0}}\n'
    with trio.fail_after(60):
        async with open_api(tmp_path, toml) as api:
            bus = api.sup.events
            with stuck_subscriber(api):
                await wait_for(lambda: bus.history is not None)
                for i in range(3 * HISTORY):
                    bus.publish("reload", {"ok": False, "errors": [str(i)]})
                    if i % 1000 == 0:
                        await trio.lowlevel.checkpoint()
                assert bus.history is not None
                assert len(bus.history) == HISTORY


def rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def many(count: int, gen: int = 0) -> str:
    """`count` in-process agents; every tenth has `gen` in its params (a 10 % reload)."""
    return "".join(
        f'[agents.a{i}]\nentry = "{AGENTS}:talker"\n'
        f"params = {{lines = 0, gen = {gen if i % 10 == 0 else 0}}}\n"
        for i in range(count)
    )


async def test_10000_agents_reload_10_percent_with_the_stream_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The stuck client is most likely still connected during the reload; the test holds
    # either way (no wait assumes it is).
    monkeypatch.setattr(server, "WRITE_TIMEOUT", 5.0)
    count = 10_000
    with trio.fail_after(240):
        async with open_api(tmp_path, many(count)) as api:
            bus = api.sup.events
            with stuck_subscriber(api):
                async with sse(api.http, "/events") as stream:
                    snapshot = await stream.next()
                    assert snapshot[0] == "snapshot"
                    assert len(snapshot[1]["agents"]) == count
                    before = rss()
                    seen: list[str] = []

                    async def read() -> None:
                        while True:
                            kind, data, _ = await stream.next()
                            seen.append(kind)
                            if kind == "cutoff" or (kind == "reload" and data["ok"]):
                                return

                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(read)
                        api.manifest.write_text(many(count, gen=1))
                        answer = await api.http.post("/reload", timeout=120)
                    assert answer.status_code == 200, answer.text
                    assert len(answer.json()["restarted"]) == count // 10
                    assert len(answer.json()["unchanged"]) == count - count // 10
                    # the reader kept up (it saw the reload) or was cut off, said so last
                    assert seen[-1] in ("reload", "cutoff")
                    if seen[-1] == "reload":
                        assert seen.count("agent") >= 2 * (count // 10)

                    # The stuck one is dropped by the send timeout once a send to it
                    # blocks, i.e. once its socket's buffers are full: the snapshot and
                    # this reload's events may still fit in them (the kernel grows a
                    # loopback send buffer to megabytes), so more reloads make more events
                    # until it is. The reader stays: it reads on (a reader that stopped
                    # would be dropped too, once its own buffers filled). The reloads'
                    # idle keep-alive connections end after HEAD_TIMEOUT.
                    async def keep_reading() -> None:
                        while True:
                            await stream.next()

                    async with trio.open_nursery() as reader:
                        reader.start_soon(keep_reading)
                        gen = 1
                        while True:
                            with trio.move_on_after(server.WRITE_TIMEOUT + server.HEAD_TIMEOUT + 5):
                                await wait_for(lambda: connection_tasks() == 1)
                                break
                            gen += 1
                            api.manifest.write_text(many(count, gen=gen))
                            more = await api.http.post("/reload", timeout=120)
                            assert more.status_code == 200, more.text
                        reader.cancel_scope.cancel()
                    assert bus.history is not None
                    assert len(bus.history) <= HISTORY
                    grown = rss() - before
                    print(
                        f"reload with the stream open: the reader got {len(seen)} events, "
                        f"the last {seen[-1]!r}; RSS grew {grown / 2**20:.1f} MiB"
                    )
                    assert grown < 64 * 2**20
