"""The HTTP control API, against a real hypercorn server on port 0 with a real client.

Each test arranges a manifest in `tmp_path`, runs a `Supervisor` and `serve_api` in the
test's own trio loop, and talks to them with `httpx.AsyncClient` over TCP (or a unix
socket). In-process agents come from ``tests/agents/api_agents.py``.
"""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from supervisor import manifest as mf
from supervisor.api.access import ApiConfigError, Guard, parse_address
from supervisor.api.app import build_app
from supervisor.api.body import MAX_BODY
from supervisor.api.openapi import OPENAPI
from supervisor.api.serve import serve_api
from supervisor.api.tokenfile import read_token
from supervisor.manifest import AgentSpec
from supervisor.owner import Supervisor
from supervisor.runners import Hooks, Outcome, Runner
from tests.agents import api_agents

AGENTS = "tests.agents.api_agents"
IDLE = f'[agents.a]\nentry = "{AGENTS}:idle"\n'
JSON = {"content-type": "application/json"}
CHUNKED = "Transfer-Encoding: chunked"
AGENT_KEYS = {
    "id", "kind", "source", "state", "pid", "restarts", "since", "last_exit", "spec",
    "up", "status", "reason", "blocked", "health", "cpu", "rss",
}  # fmt: skip


@pytest.fixture(autouse=True)
def _no_token_from_outside(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SUPERVISOR_TOKEN", raising=False)


@attrs.define
class Api:
    sup: Supervisor
    http: httpx.AsyncClient
    address: str
    manifest: Path
    cancel_api: trio.CancelScope

    def slot_state(self, agent_id: str) -> str | None:
        slot = self.sup.slots.get(agent_id)
        return None if slot is None else slot.state


@asynccontextmanager
async def open_api(
    tmp_path: Path,
    toml: str = IDLE,
    *,
    address: str = "127.0.0.1:0",
    headers: dict[str, str] | None = None,
    runner: Runner | None = None,
) -> AsyncIterator[Api]:
    """Run a supervisor for `toml` and its API; yield once every agent has settled."""
    manifest = tmp_path / "agents.toml"
    manifest.write_text(toml)
    sup = Supervisor(mf.load(manifest), runner)
    async with trio.open_nursery() as nursery:

        async def run_supervisor(*, task_status: trio.TaskStatus[None]) -> None:
            await sup.run(task_status=task_status)
            nursery.cancel_scope.cancel()  # and the API with it

        await nursery.start(run_supervisor)
        await sup.wait_started(tuple(sup.slots))
        cancel_api = trio.CancelScope()

        async def run_api(*, task_status: trio.TaskStatus[str]) -> None:
            with cancel_api:
                await serve_api(sup, address, task_status=task_status)

        bound = await nursery.start(run_api)
        client = _client(bound, headers)
        async with client:
            yield Api(sup, client, bound, manifest, cancel_api)
        sup.request_shutdown()


def _client(bound: str, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
    """A client of the API at `bound`; on TCP it sends the token the API made for this
    user (as the CLI does), unless `headers` say otherwise."""
    if bound.startswith("unix:"):
        transport = httpx.AsyncHTTPTransport(uds=bound.removeprefix("unix:"))
        return httpx.AsyncClient(base_url="http://api", transport=transport, headers=headers)
    token = read_token(int(bound.rpartition(":")[2]))
    if headers is None and token is not None:
        headers = {"Authorization": f"Bearer {token}"}
    return httpx.AsyncClient(base_url=f"http://{bound}", headers=headers)


async def wait_for(condition: Callable[[], object]) -> None:
    """Wait until `condition()` is true; the test's `fail_after` bounds the wait.

    It polls: the conditions span slots, the slot table, the overlay and files, and no
    one event covers them all.
    """
    while not condition():  # noqa: ASYNC110
        await trio.sleep(0.005)


async def read_to_end(stream: trio.SocketStream) -> bytes:
    """All the server sent until it closed the connection (or reset it)."""
    got = b""
    try:
        while chunk := await stream.receive_some():
            got += chunk
    except trio.BrokenResourceError:
        pass
    return got


# -- reading ------------------------------------------------------------------------


async def test_agents_list_and_get_show_the_agent_shape(tmp_path: Path) -> None:
    toml = IDLE + f'[agents.off]\nentry = "{AGENTS}:idle"\nenabled = false\n'
    with trio.fail_after(10):
        async with open_api(tmp_path, toml) as api:
            r = await api.http.get("/agents")
            assert r.status_code == 200
            assert r.headers["content-type"] == "application/json"
            agents = {a["id"]: a for a in r.json()["agents"]}
            assert list(agents) == ["a", "off"]
            a = agents["a"]
            assert set(a) == AGENT_KEYS
            assert a["kind"] == "in-process"
            assert a["source"] == "manifest"
            assert (a["state"], a["up"], a["pid"], a["restarts"]) == ("running", True, None, 0)
            assert a["last_exit"] is None
            assert abs(a["since"] - time.time()) < 5
            assert a["spec"] == mf.spec_to_table(api.sup.slots["a"].spec)
            assert a["spec"]["entry"] == f"{AGENTS}:idle"
            assert (agents["off"]["state"], agents["off"]["reason"]) == ("stopped", "disabled")

            one = await api.http.get("/agents/a")
            assert one.status_code == 200
            assert one.json() == a
            missing = await api.http.get("/agents/nope")
            assert missing.status_code == 404
            assert missing.json() == {"error": "no agent 'nope'"}


async def test_last_exit_shows_code_signal_or_error(tmp_path: Path) -> None:
    toml = f"""
        [defaults]
        restart = "never"
        [agents.code]
        command = ["sh", "-c", "exit 3"]
        [agents.killed]
        command = ["sh", "-c", "kill -KILL $$"]
        [agents.raised]
        entry = "{AGENTS}:boom"
    """
    with trio.fail_after(10):
        async with open_api(tmp_path, toml) as api:
            await wait_for(lambda: all(s.exits for s in api.sup.slots.values()))
            agents = {a["id"]: a for a in (await api.http.get("/agents")).json()["agents"]}
            exits = {
                i: {k: v for k, v in a["last_exit"].items() if k != "at"} for i, a in agents.items()
            }
            assert exits == {
                "code": {"code": 3},
                "killed": {"signal": "SIGKILL"},
                "raised": {"error": "RuntimeError: boom"},
            }
            assert all(abs(a["last_exit"]["at"] - time.time()) < 5 for a in agents.values())
            assert agents["code"]["kind"] == "process"
            assert agents["code"]["pid"] is None
            assert {a["state"] for a in agents.values()} == {"failed"}


# -- loading ------------------------------------------------------------------------


async def test_load_answers_201_once_running(tmp_path: Path) -> None:
    body = {"id": "b", "entry": f"{AGENTS}:slow", "ready": "notify", "params": {"delay": 0.2}}
    with trio.fail_after(10):
        async with open_api(tmp_path) as api:
            began = trio.current_time()
            r = await api.http.post("/agents", json=body)
            assert r.status_code == 201, r.text
            assert trio.current_time() - began >= 0.2
            agent = r.json()
            assert (agent["id"], agent["source"], agent["state"]) == ("b", "api", "running")
            assert agent["spec"]["params"] == {"delay": 0.2}
            assert api.slot_state("b") == "running"
            listed = (await api.http.get("/agents/b")).json()
            assert listed["source"] == "api"


@pytest.mark.parametrize(
    ("keys", "reason"),
    [
        ({"entry": f"{AGENTS}:missing"}, "missing"),
        ({"entry": "api_no_such_module:main"}, "api_no_such_module"),
        ({"command": ["/nonexistent/api-test-binary"]}, "/nonexistent/api-test-binary"),
        (
            {"entry": f"{AGENTS}:slow", "ready": "notify", "start_timeout": 0.1},
            "start timeout",
        ),
    ],
    ids=["no-attribute", "no-module", "no-command", "start-timeout"],
)
async def test_load_that_fails_to_start_is_422_and_keeps_nothing(
    tmp_path: Path, keys: dict[str, Any], reason: str
) -> None:
    toml = '[supervisor]\nstate_file = "state.toml"\n' + IDLE
    with trio.fail_after(10):
        async with open_api(tmp_path, toml) as api:
            r = await api.http.post("/agents", json={"id": "b", "params": {"delay": 5}, **keys})
            assert r.status_code == 422, r.text
            assert r.json()["error"].startswith("agent 'b' failed to start: ")
            assert reason in r.json()["error"]
            await wait_for(lambda: "b" not in api.sup.slots)
            assert (await api.http.get("/agents/b")).status_code == 404
            assert not (tmp_path / "state.toml").exists()
            again = await api.http.post("/agents", json={"id": "b", "entry": f"{AGENTS}:idle"})
            assert again.status_code == 201


async def test_twenty_concurrent_loads_of_one_id_give_one_201(tmp_path: Path) -> None:
    body = {"id": "b", "entry": f"{AGENTS}:slow", "ready": "notify", "params": {"delay": 0.1}}
    codes: Counter[int] = Counter()

    async def load(http: httpx.AsyncClient) -> None:
        codes[(await http.post("/agents", json=body)).status_code] += 1

    with trio.fail_after(10):
        async with open_api(tmp_path) as api:
            async with trio.open_nursery() as nursery:
                for _ in range(20):
                    nursery.start_soon(load, api.http)
            assert codes == {201: 1, 409: 19}
            assert list(api.sup.slots) == ["a", "b"]
            assert api.slot_state("b") == "running"


async def post_and_leave(api: Api, body: dict[str, Any]) -> None:
    """POST /agents `body`, and go away once the owner has begun the load."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(api.http.post, "/agents", json=body))
        await wait_for(lambda: body["id"] in api.sup.slots)
        nursery.cancel_scope.cancel()


async def test_client_gone_mid_load_leaves_the_load_whole(tmp_path: Path) -> None:
    toml = '[supervisor]\nstate_file = "state.toml"\n' + IDLE
    body = {"id": "b", "entry": f"{AGENTS}:slow", "ready": "notify", "params": {"delay": 0.3}}
    with trio.fail_after(10):
        async with open_api(tmp_path, toml) as api:
            await post_and_leave(api, body)
            assert api.slot_state("b") == "starting"  # gone before the answer
            await wait_for(lambda: api.slot_state("b") == "running" and "b" in api.sup.overlay)
            assert "[agents.b]" in (tmp_path / "state.toml").read_text()
            again = await api.http.post("/agents", json=body)
            assert again.status_code == 409


async def test_client_gone_mid_failing_load_keeps_nothing(tmp_path: Path) -> None:
    body = {"id": "b", "entry": f"{AGENTS}:slow", "ready": "notify", "start_timeout": 0.2}
    with trio.fail_after(10):
        async with open_api(tmp_path) as api:
            await post_and_leave(api, {**body, "params": {"delay": 5}})
            assert api.slot_state("b") == "starting"
            await wait_for(lambda: "b" not in api.sup.slots)
            assert "b" not in api.sup.overlay


@pytest.mark.parametrize(
    ("content", "status", "message"),
    [
        (b"{", 400, "request body is not valid JSON: Expecting property name"),
        (b"\xff\xfe", 400, "request body is not valid JSON"),
        (b"", 400, "request body is not valid JSON"),
        (b"[1, 2]", 422, "request body must be a JSON object, not an array"),
        (b"null", 422, "request body must be a JSON object, not null"),
        (b'{"id": "b", "params": {"x": NaN}}', 400, "NaN is not a JSON number"),
        (b'{"id": "b", "params": {"x": 1e999}}', 400, "1e999 is out of range"),
        (b'{"id": "b", "params": {"x": 9223372036854775808}}', 400, "does not fit in 64 bits"),
        (b'{"id": "b", "params": {"x": "\\ud800"}}', 422, "lone surrogate"),
        (b'{"id": "b", "params": ' + b'{"x": ' * 40 + b"1" + b"}" * 41, 422, "deeper than 32"),
        (b"[" * 100_000 + b"]" * 100_000, 400, "not valid JSON"),
        (b'{"id": 5, "entry": "m:f"}', 422, "id: must be a string"),
        (b'{"entry": "m:f"}', 422, "id"),
        (b'{"id": "Bad/Id", "entry": "m:f"}', 422, "Bad/Id"),
        (b'{"id": "b", "entry": "m:f", "entrx": 1}', 422, 'did you mean "entry"'),
        (b'{"id": "b", "entry": "m:f", "command": ["x"]}', 422, "entry"),
        (b'{"id": "b", "entry": "m:f", "after": ["nobody"]}', 422, "nobody"),
        (b'{"id": "b", "entry": "m:f", "restart": 3}', 422, "restart"),
        (b'{"id": "a", "entry": "m:f"}', 409, "agent 'a' already exists"),
    ],
)
async def test_load_refusals_change_nothing(
    tmp_path: Path, content: bytes, status: int, message: str
) -> None:
    with trio.fail_after(10):
        async with open_api(tmp_path) as api:
            before = dict(api.sup.slots)
            r = await api.http.post("/agents", content=content, headers=JSON)
            assert r.status_code == status, r.text
            assert message in r.json()["error"]
            if status == 422 and "errors" in r.json():
                assert all(isinstance(e, str) for e in r.json()["errors"])
            assert api.sup.slots == before
            assert api.slot_state("a") == "running"


async def test_invalid_spec_answers_every_located_message(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with open_api(tmp_path) as api:
            r = await api.http.post("/agents", json={"id": "b", "entrx": 1, "restart": "sometimes"})
            assert r.status_code == 422
            errors = r.json()["errors"]
            assert len(errors) == 3, errors
            assert all(e.startswith("request: agents.b") for e in errors)
            assert r.json()["error"] == "; ".join(errors)


async def post_raw(address: str, path: str, header: str, body: list[bytes]) -> bytes:
    """POST over a raw TCP stream: the head with `header`, then `body` piece by piece
    for as long as the server reads it; return the whole answer.

    Raw, because the point is that the answer comes while the client is still sending
    (or has not ended its body at all): httpx reads an answer only once it has sent the
    whole body.
    """
    host, port = address.rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    answer = b""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {read_token(int(port))}\r\n{header}\r\n\r\n"
    )
    async with stream:
        await stream.send_all(head.encode())
        try:
            for piece in body:
                await stream.send_all(piece)
        except trio.BrokenResourceError:
            pass  # the server answered and closed: read what it said
        while chunk := await stream.receive_some():
            answer += chunk
    return answer


def chunks(count: int, *, end: bool) -> list[bytes]:
    """`count` chunks of 64 KiB in chunked transfer coding; the last one only if `end`."""
    return [b"10000\r\n" + b"x" * 65536 + b"\r\n"] * count + ([b"0\r\n\r\n"] if end else [])


async def test_bodies_over_1_mib_are_refused_while_reading(tmp_path: Path) -> None:
    def padded(size: int) -> bytes:
        head = b'{"id": "b", "entry": "m:f", "x-pad": "'
        return head + b"x" * (size - len(head) - 2) + b'"}'

    too_large = b'{"error":"request body is larger than 1048576 bytes (1024 KiB)"}'
    with trio.fail_after(10):
        async with open_api(tmp_path) as api:
            at_limit = await api.http.post("/agents", content=padded(MAX_BODY), headers=JSON)
            assert at_limit.status_code == 422, at_limit.text  # m:f cannot start
            # A Content-Length over the limit is answered before any of the body is sent.
            answer = await post_raw(api.address, "/agents", f"Content-Length: {MAX_BODY + 1}", [])
            assert answer.startswith(b"HTTP/1.1 413 ")
            assert answer.endswith(too_large)
            # Without one, the count is kept while reading: the answer comes after 1 MiB,
            # though the client never ends its body.
            for count in [17, 32, 32, 32, 1024]:
                answer = await post_raw(api.address, "/agents", CHUNKED, chunks(count, end=False))
                assert answer.startswith(b"HTTP/1.1 413 "), answer[:100]
                assert answer.endswith(too_large)
            # A body that a route does not read does not hang the connection either.
            answer = await post_raw(api.address, "/reload", CHUNKED, chunks(64, end=True))
            assert answer.startswith(b"HTTP/1.1 200 ")
            assert list(api.sup.slots) == ["a"]


# -- unloading and control ----------------------------------------------------------


async def test_unload_answers_after_the_agents_cleanup_ran(tmp_path: Path) -> None:
    done = tmp_path / "cleaned"
    body = {"id": "b", "entry": f"{AGENTS}:cleanup", "params": {"file": str(done)}}
    with trio.fail_after(10):
        async with open_api(tmp_path) as api:
            assert (await api.http.post("/agents", json=body)).status_code == 201
            r = await api.http.delete("/agents/b")
            assert r.status_code == 200
            assert r.json() == {"unloaded": "b"}
            assert done.read_text() == "cleaned up\n"  # before the answer, not after
            assert "b" not in api.sup.slots
            assert (await api.http.get("/agents/b")).status_code == 404
            again = await api.http.delete("/agents/b")
            assert (again.status_code, again.json()) == (404, {"error": "no agent 'b'"})


async def test_unload_of_a_manifest_agent_is_409(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with open_api(tmp_path) as api:
            r = await api.http.delete("/agents/a")
            assert r.status_code == 409
            assert "declared in" in r.json()["error"]
            assert "remove it there and reload" in r.json()["error"]
            assert api.slot_state("a") == "running"


async def test_start_stop_restart(tmp_path: Path) -> None:
    done = tmp_path / "cleaned"
    toml = f'[agents.a]\nentry = "{AGENTS}:cleanup"\nparams = {{file = "{done}"}}\n'
    with trio.fail_after(10):
        async with open_api(tmp_path, toml) as api:
            stopped = await api.http.post("/agents/a/stop")
            assert (stopped.status_code, stopped.json()["state"]) == (200, "stopped")
            assert done.exists()  # answered after the cleanup
            assert (await api.http.post("/agents/a/stop")).json()["state"] == "stopped"
            ready = await api.http.get("/readyz")
            assert (ready.status_code, ready.json()["not_ready"]) == (
                503,
                {"a": "stopped: stopped on request"},
            )
            started = await api.http.post("/agents/a/start")
            assert (started.status_code, started.json()["state"]) == (200, "running")
            done.unlink()
            restarted = await api.http.post("/agents/a/restart")
            assert (restarted.status_code, restarted.json()["state"]) == (200, "running")
            assert done.exists()
            for action in ("start", "stop", "restart"):
                r = await api.http.post(f"/agents/nope/{action}")
                assert (r.status_code, r.json()) == (404, {"error": "no agent 'nope'"})


async def test_requests_during_shutdown_get_503(tmp_path: Path) -> None:
    api_agents.RELEASE["a"] = release = trio.Event()  # holds agent a in its cleanup
    with trio.fail_after(10):
        async with open_api(tmp_path, f'[agents.a]\nentry = "{AGENTS}:held"\n') as api:
            api.sup.request_shutdown()
            await wait_for(lambda: api.slot_state("a") == "stopping")
            for method, path in [("POST", "/agents/a/restart"), ("POST", "/reload")]:
                r = await api.http.request(method, path)
                assert r.status_code == 503, path
                assert r.json() == {"error": "the supervisor is shutting down"}
            r = await api.http.post("/agents", json={"id": "b", "entry": f"{AGENTS}:idle"})
            assert r.status_code == 503
            assert (await api.http.get("/agents/a")).json()["state"] == "stopping"
            release.set()


# -- reload -------------------------------------------------------------------------


async def test_reload_answers_what_changed_once_converged(tmp_path: Path) -> None:
    def agent(agent_id: str, name: str = "idle", **extra: str) -> str:
        keys = "".join(f"{k} = {v}\n" for k, v in extra.items())
        return f'[agents.{agent_id}]\nentry = "{AGENTS}:{name}"\n{keys}'

    toml = agent("a") + agent("b") + agent("d")
    with trio.fail_after(10):
        async with open_api(tmp_path, toml) as api:
            a_slot = api.sup.slots["a"]
            api.manifest.write_text(
                agent("a")
                + agent("c", "slow", ready='"notify"', params="{delay = 0.2}")
                + agent("d", params="{changed = true}")
                + agent("e", "missing")
            )
            r = await api.http.post("/reload")
            assert r.status_code == 200, r.text
            result = r.json()
            failed = result.pop("failed")
            assert result == {
                "started": ["c", "e"],
                "stopped": ["b"],
                "restarted": ["d"],
                "unchanged": ["a"],
            }
            assert list(failed) == ["e"]
            assert api.slot_state("c") == "running"  # answered once converged
            assert api.sup.slots["a"] is a_slot


async def test_reload_of_an_invalid_manifest_is_422_and_changes_nothing(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with open_api(tmp_path) as api:
            before = dict(api.sup.slots)
            api.manifest.write_text(IDLE + '[agents.b]\nentrx = "x"\n')
            r = await api.http.post("/reload")
            assert r.status_code == 422
            errors = r.json()["errors"]
            assert any("agents.b.entrx" in e and str(api.manifest) in e for e in errors), errors
            assert api.sup.slots == before
            assert api.sup.reloads_failed == 1


# -- health, readiness, metrics, OpenAPI --------------------------------------------


async def test_healthz_and_readyz(tmp_path: Path) -> None:
    toml = IDLE + f'[agents.off]\nentry = "{AGENTS}:idle"\nenabled = false\n'
    with trio.fail_after(10):
        async with open_api(tmp_path, toml) as api:
            health = await api.http.get("/healthz")
            assert (health.status_code, health.json()) == (200, {"ok": True})
            ready = await api.http.get("/readyz")
            assert (ready.status_code, ready.json()) == (200, {"ready": True, "not_ready": {}})
            body = {"id": "f", "entry": f"{AGENTS}:boom", "max_restarts": 0}
            await api.http.post("/agents", json=body)
            await wait_for(lambda: api.slot_state("f") == "failed")
            ready = await api.http.get("/readyz")
            assert ready.status_code == 503
            assert list(ready.json()["not_ready"]) == ["f"]
            assert ready.json()["not_ready"]["f"].startswith("failed: ")


async def test_metrics_parse_with_prometheus_clients_parser(tmp_path: Path) -> None:
    toml = IDLE + f'[agents.f]\nentry = "{AGENTS}:boom"\nmax_restarts = 1\n'
    with trio.fail_after(10):
        async with open_api(tmp_path, toml) as api:
            await wait_for(lambda: api.slot_state("f") == "failed")
            await api.http.post("/reload")
            api.manifest.write_text("not = [valid")
            await api.http.post("/reload")
            await api.http.get("/agents/nope")
            await api.http.get("/no/such/route")
            r = await api.http.get("/metrics")
            assert r.status_code == 200
            assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
            families = {f.name: f for f in text_string_to_metric_families(r.text)}

            def samples(name: str) -> dict[tuple[tuple[str, str], ...], float]:
                return {tuple(sorted(s.labels.items())): s.value for s in families[name].samples}

            assert samples("supervisor_agents") == {(): 2}
            assert samples("supervisor_agent_state") == {
                (("agent", "a"), ("state", "running")): 1,
                (("agent", "f"), ("state", "failed")): 1,
            }
            assert samples("supervisor_agent_up") == {(("agent", "a"),): 1, (("agent", "f"),): 0}
            assert samples("supervisor_agent_restarts") == {
                (("agent", "a"),): 0,
                (("agent", "f"),): 1,
            }
            assert families["supervisor_agent_restarts"].type == "counter"
            uptime = samples("supervisor_agent_uptime_seconds")
            assert uptime[(("agent", "f"),)] == 0
            assert 0 < uptime[(("agent", "a"),)] < 10
            assert samples("supervisor_reloads") == {
                (("result", "failed"),): 1,
                (("result", "ok"),): 1,
            }
            (last,) = samples("supervisor_last_reload_timestamp_seconds").values()
            assert abs(last - time.time()) < 10
            requests = samples("supervisor_api_requests")
            assert requests[(("code", "404"), ("method", "GET"), ("route", "/agents/{id}"))] == 1
            assert requests[(("code", "404"), ("method", "GET"), ("route", "unmatched"))] == 1
            assert requests[(("code", "422"), ("method", "POST"), ("route", "/reload"))] == 1


async def test_openapi_document_matches_the_routes(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with open_api(tmp_path) as api:
            r = await api.http.get("/openapi.json")
            assert r.status_code == 200
            doc = r.json()
    assert doc == json.loads(json.dumps(OPENAPI))
    assert doc["openapi"].startswith("3.")
    documented = {(path, m.upper()) for path, ops in doc["paths"].items() for m in ops}
    app = build_app(
        Supervisor(mf.load(api.manifest)), Guard(None, configured=False, address="unix:/x")
    )
    served = {
        (route.path, method)
        for route in app.routes  # type: ignore[attr-defined]
        for method in route.methods - {"HEAD"}
    }
    assert documented == served
    for path, ops in doc["paths"].items():
        for op in ops.values():
            changes = "security" in op
            assert changes == (op is not ops.get("get")), path
            if changes:
                assert {"401", "403", "503"} <= set(op["responses"]), path


# -- unknown routes, wrong methods, odd requests: never a 500 ----------------------


async def pretend(spec: AgentSpec, hooks: Hooks) -> Outcome:
    """A runner that runs nothing: every agent is ready at once and runs until stopped."""
    hooks.launched(None)
    hooks.ready()
    await trio.sleep_forever()
    raise AssertionError("unreachable")


@pytest.mark.slow
async def test_schemathesis_finds_no_5xx_and_nothing_off_the_document(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Whatever the fuzzer loads runs nothing (`pretend`), so any command it makes up is
    # harmless. With a token set, requests without it must get 401 as documented.
    monkeypatch.setenv("SUPERVISOR_TOKEN", "fuzz")
    schemathesis = Path(sys.executable).parent / "schemathesis"
    with trio.fail_after(120):
        async with open_api(
            tmp_path, 'x-a = 1\n[agents.a]\ncommand = "x"\n', runner=pretend
        ) as api:
            command: list[str | Path] = [
                *(schemathesis, "run", f"http://{api.address}/openapi.json"),
                *("--checks", "all"),
                # POST /agents validates beyond what a schema can say (an entry must
                # import): schema-valid bodies are often rightly refused.
                *("--exclude-checks", "positive_data_acceptance"),
                # /readyz answers a documented 503 once the fuzzer stops agent a.
                *("--exclude-path", "/readyz"),
                # Event streams do not end: tests/integration/test_observe.py reads them.
                *("--exclude-path", "/events", "--exclude-path", "/agents/{id}/logs"),
                *("--header", "Authorization: Bearer fuzz"),
                *("--max-examples", "30", "--generation-database", "none", "--no-color"),
            ]
            run = await trio.run_process(
                command,
                cwd=tmp_path,
                capture_stdout=True,
                stderr=subprocess.STDOUT,
                check=False,
            )
            output = run.stdout.decode(errors="replace")
            assert run.returncode == 0, output
            assert "Tested: 11" in output, output  # every operation but /readyz and streams
            assert (await api.http.get("/healthz")).status_code == 200


async def test_unknown_routes_404_and_wrong_methods_405_as_json(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with open_api(tmp_path) as api:
            r = await api.http.get("/nope")
            assert (r.status_code, r.json()) == (404, {"error": "no route /nope"})
            r = await api.http.put("/agents")
            assert r.status_code == 405
            assert r.headers["allow"] == "GET, HEAD, POST"
            assert r.json() == {"error": "PUT is not allowed on /agents (allowed: GET, HEAD, POST)"}
            r = await api.http.get("/agents/a/start")
            assert r.status_code == 405
            r = await api.http.post("/healthz")
            assert (r.status_code, r.headers["content-type"]) == (405, "application/json")
            head = await api.http.head("/agents")
            assert (head.status_code, head.content) == (200, b"")


async def test_odd_requests_never_get_a_5xx(tmp_path: Path) -> None:
    odd: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", "/agents/%2F..%2F..%2Fetc", {}),
        ("GET", "/agents/" + "x" * 5000, {}),
        ("GET", "/agents/%C3%A9t%C3%A9", {}),
        ("GET", "/agents/%FF", {}),
        ("DELETE", "/agents/%00", {}),
        ("POST", "/agents/a/start", {"content": b"\x00garbage"}),
        ("POST", "/agents/..%2Fa/stop", {}),
        ("POST", "/agents", {"content": b'{"id": "b"}', "headers": {"content-type": "text/x"}}),
        ("POST", "/agents", {"json": {"id": "b", "path": "/nonexistent/folder"}}),
        ("POST", "/agents", {"json": {"id": "b", "path": "../../../../etc"}}),
        ("POST", "/agents", {"json": {"path": "."}}),
        ("POST", "/agents", {"json": {"id": "b", "command": ""}}),
        ("POST", "/agents", {"json": {"id": "b", "command": []}}),
        ("POST", "/agents", {"json": {"id": "b", "command": "sh -c 'unterminated"}}),
        ("POST", "/agents", {"json": {"id": "b", "entry": "::"}}),
        ("POST", "/agents", {"json": {"id": "b", "entry": "m:f", "env": {"A": 1}}}),
        ("POST", "/agents", {"json": {"id": "b", "entry": "m:f", "stop_signal": "SIGNOPE"}}),
        ("POST", "/agents", {"json": {"id": "b", "entry": "m:f", "backoff": {"initial": -1}}}),
        ("POST", "/agents", {"json": {"id": "b", "entry": "m:f", "cwd": "\x00"}}),
        ("POST", "/reload?x=1", {"content": b"[]"}),
        ("PATCH", "/agents/a", {}),
        ("OPTIONS", "/agents", {}),
        ("BREW", "/agents", {}),
        ("GET", "/metrics?name[]=x", {}),
    ]
    with trio.fail_after(20):
        async with open_api(tmp_path) as api:
            for method, path, kw in odd:
                r = await api.http.request(method, path, **kw)
                assert r.status_code < 500, (method, path, r.text)
                if r.status_code >= 400:
                    assert isinstance(r.json()["error"], str)
            for route in ("/agents", "/readyz", "/metrics", "/openapi.json"):
                assert (await api.http.get(route)).status_code < 500


async def test_an_unexpected_exception_answers_500_as_json_and_is_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import supervisor.api.app

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    with trio.fail_after(10):
        async with open_api(tmp_path) as api:
            monkeypatch.setattr(supervisor.api.app, "agents_json", broken)
            r = await api.http.get("/agents/a")
            assert r.status_code == 500
            assert r.json() == {"error": "internal error: RuntimeError('a bug')"}
            monkeypatch.undo()
            metrics = (await api.http.get("/metrics")).text
            assert (
                'supervisor_api_requests_total{code="500",method="GET",route="/agents/{id}"} 1.0'
                in metrics
            )


# -- access control -----------------------------------------------------------------


async def test_with_a_token_changes_need_it(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("s3cret\n")
    (tmp_path / "token").chmod(0o640)  # group-readable is allowed, with a warning
    toml = '[supervisor]\napi_token_file = "token"\n' + IDLE
    with trio.fail_after(10):
        # headers={}: no token at all (not one found in this user's token files)
        async with open_api(tmp_path, toml, headers={}) as api:
            for method, path in [("POST", "/reload"), ("POST", "/agents"), ("DELETE", "/agents/a")]:
                r = await api.http.request(method, path)
                assert r.status_code == 401, path
                assert r.headers["www-authenticate"] == 'Bearer realm="supervisor"'
                assert r.json() == {"error": "this route needs Authorization: Bearer <token>"}
            tries = {
                b"Basic czNjcmV0": 401,
                b"Bearer": 401,
                b"Bearer wrong": 403,
                b"Bearer \xe9": 403,
            }
            for given, status in tries.items():
                r = await api.http.post("/agents/a/stop", headers=[(b"authorization", given)])
                assert r.status_code == status, given
            assert api.slot_state("a") == "running"
            assert (await api.http.get("/agents")).status_code == 401  # agents' env: secrets
            assert (await api.http.get("/metrics")).status_code == 200
            auth = {"authorization": "bearer s3cret"}
            assert (await api.http.get("/agents", headers=auth)).status_code == 200
            ok = await api.http.post("/agents/a/stop", headers=auth)
            assert (ok.status_code, ok.json()["state"]) == (200, "stopped")


async def test_the_environment_token_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "token").write_text("from-file")
    (tmp_path / "token").chmod(0o600)
    monkeypatch.setenv("SUPERVISOR_TOKEN", " from-env\n")
    toml = '[supervisor]\napi_token_file = "token"\n' + IDLE
    with trio.fail_after(10):
        async with open_api(tmp_path, toml) as api:
            r = await api.http.post("/reload", headers={"authorization": "Bearer from-file"})
            assert r.status_code == 403
            r = await api.http.post("/reload", headers={"authorization": "Bearer from-env"})
            assert r.status_code == 200


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read it"),
        ("  \n", "the file is empty"),
        ("s3cret", r"others can use it \(mode 0644\): run `chmod 600"),
    ],
    ids=["missing", "empty", "world-readable"],
)
async def test_a_bad_token_file_stops_the_api_from_starting(
    tmp_path: Path, content: str | None, message: str
) -> None:
    if content is not None:
        (tmp_path / "token").write_text(content)
        (tmp_path / "token").chmod(0o644 if message.startswith("others") else 0o600)
    manifest = tmp_path / "agents.toml"
    manifest.write_text('[supervisor]\napi_token_file = "token"\n')
    sup = Supervisor(mf.load(manifest))
    with trio.fail_after(5), pytest.raises(ApiConfigError, match=message) as caught:
        await serve_api(sup, "127.0.0.1:0")
    assert f"api_token_file {tmp_path / 'token'}" in str(caught.value)


@pytest.mark.parametrize(
    ("address", "local"),
    [
        ("127.0.0.1:7070", True),
        ("127.8.9.1:7070", True),
        ("localhost:7070", True),
        ("[::1]:7070", True),
        ("unix:/run/supervisor.sock", True),
        ("0.0.0.0:7070", False),
        ("[::]:7070", False),
        ("192.168.1.20:7070", False),
        ("example.com:7070", False),
    ],
)
def test_only_loopback_and_unix_sockets_are_local(address: str, local: bool) -> None:
    assert parse_address(address).local is local


@pytest.mark.parametrize("address", ["7070", "host:", ":7070", "host:port", "h:99999", "unix:"])
def test_bad_addresses_are_refused(address: str) -> None:
    with pytest.raises(ApiConfigError, match="API address"):
        parse_address(address)


async def test_unix_socket_serves_changes_without_a_token(tmp_path: Path) -> None:
    sock = tmp_path / "api.sock"
    with trio.fail_after(10):
        async with open_api(tmp_path, address=f"unix:{sock}") as api:
            assert api.address == f"unix:{sock}"
            r = await api.http.post("/agents/a/restart")
            assert (r.status_code, r.json()["state"]) == (200, "running")
            api.cancel_api.cancel()
            await wait_for(lambda: not sock.exists())  # removed on the way out


# -- serving -----------------------------------------------------------------------


async def test_a_stale_unix_socket_is_replaced_and_a_live_one_is_not(tmp_path: Path) -> None:
    sock = tmp_path / "api.sock"
    with socket.socket(socket.AF_UNIX) as gone:  # bound, then closed: nobody listens
        gone.bind(str(sock))
    with trio.fail_after(10):
        async with open_api(tmp_path, address=f"unix:{sock}") as api:
            assert (await api.http.get("/healthz")).status_code == 200
            with pytest.raises(ApiConfigError, match="another process answers on this socket"):
                await serve_api(api.sup, f"unix:{sock}")
            assert (await api.http.get("/healthz")).status_code == 200


async def test_an_address_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with open_api(tmp_path) as api:
            with pytest.raises(ApiConfigError, match=f"API address {api.address}: cannot listen"):
                await serve_api(api.sup, api.address)


async def test_cancelling_the_api_lets_requests_in_flight_finish(tmp_path: Path) -> None:
    body = {"id": "b", "entry": f"{AGENTS}:slow", "ready": "notify", "params": {"delay": 0.3}}
    with trio.fail_after(10):
        async with open_api(tmp_path) as api:
            answers: list[int] = []

            async def load() -> None:
                answers.append((await api.http.post("/agents", json=body)).status_code)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(load)
                await wait_for(lambda: "b" in api.sup.slots)
                api.cancel_api.cancel()
            assert answers == [201]
            async with _client(api.address) as fresh:
                with pytest.raises(httpx.ConnectError):
                    await fresh.get("/healthz")


def test_agent_times_are_wall_times() -> None:
    # `since` and `last_exit.at` are trio times shifted by one offset per answer.
    async def offset() -> float:
        from supervisor.api.agent import wall_offset

        return wall_offset() + trio.current_time()

    assert math.isclose(trio.run(offset), time.time(), abs_tol=1.0)
