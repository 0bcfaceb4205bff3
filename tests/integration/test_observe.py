"""Watching agents over the API: recent output (`/agents/{id}/logs`) and `/events`.

A real supervisor and hypercorn in the test's trio loop (`open_api`), real processes and
in-process agents from ``tests/agents/observe_agents.py``, read with httpx over TCP.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import h11
import httpx
import pytest
import trio

from supervisor.events import HISTORY
from supervisor.output import LINE_LIMIT, MAX_CHARS
from tests.integration.test_api import open_api, wait_for

AGENTS = "tests.agents.observe_agents"


@pytest.fixture(autouse=True)
def _no_token_from_outside(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SUPERVISOR_TOKEN", raising=False)


class Sse:
    """One SSE response over a raw TCP connection (h11), read event by event.

    (httpx leaves an internal generator unclosed when a stream is abandoned under trio.)
    """

    def __init__(self, stream: trio.SocketStream, conn: h11.Connection) -> None:
        self.stream = stream
        self.conn = conn
        self.buffer = ""

    async def next(self) -> tuple[str, Any, str | None]:
        while "\n\n" not in self.buffer:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.stream.receive_some(65536))
            elif isinstance(event, h11.Data):
                self.buffer += bytes(event.data).decode()
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                raise EOFError("the stream ended")
        block, self.buffer = self.buffer.split("\n\n", 1)
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if not line.startswith(":"):
                name, _, value = line.partition(": ")
                fields[name] = value
        if "data" not in fields:
            return await self.next()  # a keepalive
        return fields.get("event", "message"), json.loads(fields["data"]), fields.get("id")

    async def rest(self) -> list[tuple[str, Any, str | None]]:
        """Every event until the stream ends."""
        events = []
        while True:
            try:
                events.append(await self.next())
            except EOFError:
                return events

    async def until(self, kind: str, **match: Any) -> tuple[Any, str | None]:
        while True:
            got, data, event_id = await self.next()
            if got == kind and all(data.get(k) == v for k, v in match.items()):
                return data, event_id


@asynccontextmanager
async def sse(
    http: httpx.AsyncClient, path: str, headers: dict[str, str] | None = None
) -> AsyncIterator[Sse]:
    host, port = str(http.base_url.host), http.base_url.port
    assert port is not None
    conn = h11.Connection(h11.CLIENT)
    all_headers = [("Host", f"{host}:{port}"), *(headers or {}).items(), *http.headers.items()]
    async with await trio.open_tcp_stream(host, port) as stream:
        await stream.send_all(
            conn.send(h11.Request(method="GET", target=path, headers=all_headers))
        )
        await stream.send_all(conn.send(h11.EndOfMessage()))
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                break
        assert event.status_code == 200, event
        assert dict(event.headers)[b"content-type"].startswith(b"text/event-stream")
        yield Sse(stream, conn)


# -- recent output --------------------------------------------------------------------


async def test_logs_of_a_process_and_an_in_process_agent(tmp_path: Path) -> None:
    toml = f"""
        [agents.proc]
        command = ["sh", "-c", "echo out1; echo err1 >&2; echo out2; exec sleep 1000"]
        [agents.inproc]
        entry = "{AGENTS}:talker"
        params = {{lines = 5}}
    """
    with trio.fail_after(20):
        async with open_api(tmp_path, toml) as api:
            proc = api.sup.slots["proc"]
            await wait_for(lambda: proc.recent_output and proc.recent_output.next_seq == 3)
            r = await api.http.get("/agents/proc/logs")
            assert r.status_code == 200
            got = r.json()["lines"]
            assert {(x["stream"], x["msg"]) for x in got} == {
                ("stdout", "out1"), ("stderr", "err1"), ("stdout", "out2"),
            }  # fmt: skip
            assert [x["msg"] for x in got if x["stream"] == "stdout"] == ["out1", "out2"]
            assert all(abs(x["ts"] - got[0]["ts"]) < 60 for x in got)
            r = await api.http.get("/agents/inproc/logs", params={"lines": 2})
            assert r.json()["lines"] == [
                {"ts": r.json()["lines"][0]["ts"], "stream": "log", "msg": "line 3"},
                {"ts": r.json()["lines"][1]["ts"], "stream": "log", "msg": "line 4"},
            ]
            assert (await api.http.get("/agents/nope/logs")).status_code == 404
            bad = await api.http.get("/agents/proc/logs", params={"lines": "-1"})
            assert bad.status_code == 400
            assert "lines" in bad.json()["error"]
            bad = await api.http.get("/agents/proc/logs", params={"follow": "maybe"})
            assert bad.status_code == 400


async def test_an_agent_that_prints_nothing_has_no_buffer(tmp_path: Path) -> None:
    toml = f'[agents.quiet]\nentry = "{AGENTS}:talker"\nparams = {{lines = 0}}\n'
    with trio.fail_after(10):
        async with open_api(tmp_path, toml) as api:
            assert (await api.http.get("/agents/quiet/logs")).json() == {"lines": []}
            assert api.sup.slots["quiet"].recent_output is None


async def test_lines_before_a_crash_are_kept_across_the_restart(tmp_path: Path) -> None:
    toml = f"""
        [agents.flaky]
        entry = "{AGENTS}:crash_once"
        backoff = {{initial = 0.01, jitter = 0}}
    """
    with trio.fail_after(10):
        async with open_api(tmp_path, toml) as api:
            await wait_for(lambda: api.sup.slots["flaky"].restarts == 1)
            await wait_for(lambda: api.sup.slots["flaky"].state == "running")
            msgs = [x["msg"] for x in (await api.http.get("/agents/flaky/logs")).json()["lines"]]
            assert msgs[0] == "WARNING start 1"
            assert msgs[1].startswith("ERROR crashed: RuntimeError: first start fails\nTraceback")
            assert msgs[2] == "WARNING start 2"


async def test_buffers_are_bounded_for_100_mb_of_lines_and_a_10_mb_line(tmp_path: Path) -> None:
    toml = """
        [defaults]
        restart = "never"
        [agents.flood]
        command = ["sh", "-c", "yes | head -c 100000000; echo last"]
        log_lines = 50
        [agents.long]
        command = ["sh", "-c", "head -c 10000000 /dev/zero | tr '\\\\0' x; echo; echo end"]
    """
    # The buffers are under test, not stdout: with the output logger at INFO (as an
    # earlier test in the same process may leave it) 50 million LogRecords take minutes.
    output = logging.getLogger("supervisor.output")
    level = output.level
    output.setLevel(logging.WARNING)
    try:
        await _flood_and_check(tmp_path, toml)
    finally:
        output.setLevel(level)


async def _flood_and_check(tmp_path: Path, toml: str) -> None:
    with trio.fail_after(600):  # generous: 100 MB through the loop on a loaded machine
        async with open_api(tmp_path, toml) as api:
            await wait_for(lambda: all(s.state == "exited" for s in api.sup.slots.values()))
            flood = api.sup.slots["flood"].recent_output
            assert flood is not None
            assert flood.next_seq == 50_000_001  # every line counted
            assert len(flood.lines) == 50
            assert flood.lines[-1].msg == "last"
            long = api.sup.slots["long"].recent_output
            assert long is not None
            assert long.next_seq == -(-10_000_000 // LINE_LIMIT) + 1
            assert sum(len(line.msg) for line in long.lines) <= MAX_CHARS
            assert max(len(line.msg) for line in long.lines) == LINE_LIMIT
            assert long.lines[-1].msg == "end"
            got = (await api.http.get("/agents/long/logs")).json()["lines"]
            assert got[-1]["msg"] == "end"
            assert len(got) == len(long.lines)


async def test_follow_streams_the_tail_then_new_lines_and_resumes(tmp_path: Path) -> None:
    toml = f'[agents.a]\nentry = "{AGENTS}:talker"\nparams = {{lines = 4}}\n'
    with trio.fail_after(20):
        async with open_api(tmp_path, toml) as api:
            slot = api.sup.slots["a"]
            await wait_for(lambda: slot.recent_output and slot.recent_output.next_seq == 4)
            async with sse(api.http, "/agents/a/logs?follow=true&lines=2") as stream:
                assert (await stream.next())[1]["msg"] == "line 2"
                assert (await stream.next())[1]["msg"] == "line 3"
                slot.output("stdout", ["fresh"])
                kind, data, event_id = await stream.next()
                assert (kind, data["msg"], data["stream"], event_id) == (
                    "line", "fresh", "stdout", "4",
                )  # fmt: skip
            slot.output("stdout", ["missed 1", "missed 2"])
            headers = {"Last-Event-ID": "4"}
            async with sse(api.http, "/agents/a/logs?follow=true", headers) as stream:
                assert (await stream.next())[1]["msg"] == "missed 1"
                assert (await stream.next())[1]["msg"] == "missed 2"


async def test_follow_ends_when_the_agent_is_removed(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with open_api(tmp_path, "") as api:
            r = await api.http.post(
                "/agents", json={"id": "x", "entry": f"{AGENTS}:talker", "params": {"lines": 1}}
            )
            assert r.status_code == 201
            async with sse(api.http, "/agents/x/logs?follow=1") as stream:
                assert (await stream.next())[1]["msg"] == "line 0"
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(api.http.delete, "/agents/x")
                    assert (await stream.next())[0] == "end"
                with pytest.raises(EOFError):
                    await stream.next()


async def test_a_follower_far_behind_is_told_what_it_missed(tmp_path: Path) -> None:
    toml = f'[agents.a]\nentry = "{AGENTS}:talker"\nparams = {{lines = 0}}\nlog_lines = 10\n'
    with trio.fail_after(20):
        async with open_api(tmp_path, toml) as api:
            slot = api.sup.slots["a"]
            slot.output("stdout", ["old"])
            async with sse(api.http, "/agents/a/logs?follow=1") as stream:
                assert (await stream.next())[1]["msg"] == "old"
                # 100 lines at once: the ring keeps 10, so 90 are gone before it reads
                slot.output("stdout", [f"n{i}" for i in range(100)])
                assert (await stream.next())[:2] == ("skipped", {"lines": 90})
                assert (await stream.next())[1]["msg"] == "n90"


# -- events ---------------------------------------------------------------------------


async def test_events_snapshot_then_changes_reload_and_resume(tmp_path: Path) -> None:
    toml = f'[agents.a]\nentry = "{AGENTS}:talker"\n[agents.b]\nentry = "{AGENTS}:talker"\n'
    with trio.fail_after(20):
        async with open_api(tmp_path, toml) as api:
            async with sse(api.http, "/events") as stream:
                kind, data, snap_id = await stream.next()
                assert kind == "snapshot"
                assert snap_id is not None
                assert snap_id.startswith(api.sup.events.epoch + "-")
                assert [a["id"] for a in data["agents"]] == ["a", "b"]
                assert data["agents"][0]["state"] == "running"
                assert (await api.http.post("/agents/a/stop")).status_code == 200
                stopping, _ = await stream.until("agent", id="a", state="stopping")
                assert set(stopping) == {"id", "state", "reason", "pid", "restarts", "since"}
                _, stopped_id = await stream.until("agent", id="a", state="stopped")
                api.manifest.write_text(f'[agents.b]\nentry = "{AGENTS}:talker"\n')
                assert (await api.http.post("/reload")).status_code == 200
                removed, _ = await stream.until("removed")
                assert removed == {"id": "a"}
                reload, reload_id = await stream.until("reload")
                assert reload["ok"] is True
                assert reload["stopped"] == ["a"]
            # resumed from the stop: the removal and the reload again, no snapshot
            assert stopped_id is not None
            async with sse(api.http, "/events", {"Last-Event-ID": stopped_id}) as stream:
                assert (await stream.next())[:2] == ("removed", {"id": "a"})
                _, _, again = await stream.next()
                assert again == reload_id
            # an id of another run, or nonsense: a fresh snapshot
            for stale in ("0000-5", "garbage"):
                async with sse(api.http, "/events", {"Last-Event-ID": stale}) as stream:
                    assert (await stream.next())[0] == "snapshot"


async def test_events_end_with_shutdown(tmp_path: Path) -> None:
    toml = f'[agents.a]\nentry = "{AGENTS}:talker"\n'
    with trio.fail_after(20):
        async with open_api(tmp_path, toml) as api, sse(api.http, "/events") as stream:
            await stream.until("snapshot")
            api.sup.request_shutdown()
            await stream.until("shutdown", reason="requested")
            await stream.until("agent", id="a", state="stopped")
            await stream.rest()  # and then the stream ends


async def test_a_subscriber_that_never_reads_does_not_slow_the_owner(tmp_path: Path) -> None:
    toml = f'[agents.a]\nentry = "{AGENTS}:talker"\nparams = {{lines = 0}}\n'
    with trio.fail_after(60):
        async with open_api(tmp_path, toml) as api:
            host, port = api.address.rsplit(":", 1)
            stuck = socket.create_connection((host, int(port)))
            stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            auth = api.http.headers.get("authorization", "")
            head = f"GET /events HTTP/1.1\r\nHost: {host}\r\nAuthorization: {auth}\r\n\r\n"
            stuck.sendall(head.encode())
            await wait_for(lambda: api.sup.events.history is not None)
            slot = api.sup.slots["a"]
            # Real changes, then far more events than the history holds, while that
            # client reads nothing.
            for _ in range(20):
                assert (await api.http.post("/agents/a/restart")).status_code == 200
            for i in range(2 * HISTORY):
                api.sup.events.publish("reload", {"ok": False, "errors": [str(i)]})
            history = api.sup.events.history
            assert history is not None
            assert len(history) == HISTORY
            assert slot.state == "running"
            # a reading client still gets its snapshot and live events
            async with sse(api.http, "/events") as stream:
                await stream.until("snapshot")
                stuck.close()
                await api.http.post("/agents/a/stop")
                await stream.until("agent", id="a", state="stopped")


async def test_a_slow_subscriber_is_cut_off_with_a_final_event(tmp_path: Path) -> None:
    toml = f'[agents.a]\nentry = "{AGENTS}:talker"\nparams = {{lines = 0}}\n'
    with trio.fail_after(30):
        async with open_api(tmp_path, toml) as api, sse(api.http, "/events") as stream:
            await stream.until("snapshot")
            bus = api.sup.events
            # More events than the history holds, published before the reader reads again.
            for i in range(HISTORY + 10):
                bus.publish("reload", {"ok": False, "errors": [str(i)]})
            kind, data, _ = await stream.next()
            assert kind == "cutoff"
            assert "fell" in data["reason"]
            with pytest.raises(EOFError):
                await stream.next()


async def test_the_status_page_is_served_without_a_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SUPERVISOR_TOKEN", "sesame")
    with trio.fail_after(10):
        async with open_api(tmp_path, "") as api:
            page = await api.http.get("/")
            assert page.status_code == 200
            assert page.headers["content-type"].startswith("text/html")
            assert (await api.http.get("/events")).status_code == 401
            assert (await api.http.get("/agents/x/logs")).status_code == 401
            auth = {"Authorization": "Bearer sesame"}
            assert (await api.http.get("/agents/x/logs", headers=auth)).status_code == 404
