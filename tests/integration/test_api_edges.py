"""API edge cases against a real server: the state file failing, duplicate keys, stable since."""

from __future__ import annotations

from pathlib import Path

import trio

from .test_api import AGENTS, IDLE, open_api


async def test_an_unwritable_state_file_refuses_the_load_and_keeps_running(
    tmp_path: Path,
) -> None:
    toml = f'[supervisor]\nstate_file = "missing-folder/state.toml"\n{IDLE}'
    with trio.fail_after(10):
        async with open_api(tmp_path, toml) as api:
            body = {"id": "b", "entry": f"{AGENTS}:idle"}
            r = await api.http.post("/agents", json=body)
            assert r.status_code == 422
            assert "cannot write the state file" in r.json()["error"]
            assert "b" not in api.sup.slots
            assert api.sup.slots["a"].state == "running"
            assert (await api.http.get("/healthz")).status_code == 200


async def test_a_bad_body_is_located_in_the_request_not_the_state_file(
    tmp_path: Path,
) -> None:
    toml = f'[supervisor]\nstate_file = "state.toml"\n{IDLE}'
    with trio.fail_after(10):
        async with open_api(tmp_path, toml) as api:
            r = await api.http.post("/agents", json={"id": "b", "comand": "sleep 1"})
            assert r.status_code == 422
            assert any(e.startswith("request: agents.b") for e in r.json()["errors"])


async def test_a_key_given_twice_is_refused(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with open_api(tmp_path) as api:
            body = b'{"id": "m", "id": "n", "entry": "%s:idle"}' % AGENTS.encode()
            r = await api.http.post(
                "/agents", content=body, headers={"content-type": "application/json"}
            )
            assert r.status_code == 400
            assert "the key 'id' is given twice" in r.json()["error"]
            assert set(api.sup.slots) == {"a"}


async def test_a_folder_path_with_a_nul_is_refused_not_a_500(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with open_api(tmp_path) as api:
            for body in ({"id": "b", "path": "x\u0000y"}, {"path": "x\u0000y"}):
                r = await api.http.post("/agents", json=body)
                assert r.status_code == 422, r.text
                assert "has a NUL character" in r.text
            assert set(api.sup.slots) == {"a"}


async def test_since_is_stable_for_an_untouched_agent(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with open_api(tmp_path) as api:
            first = (await api.http.get("/agents/a")).json()["since"]
            await trio.sleep(0.01)
            assert (await api.http.get("/agents/a")).json()["since"] == first
