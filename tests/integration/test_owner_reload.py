"""Reloads and the API overlay: only an accepted reload changes anything, API agents are
validated against the manifest being loaded, and every reload is answered.

A real `Supervisor` with real in-process agents; its requests are made directly.
"""

from __future__ import annotations

import tomllib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from supervisor import manifest as mf
from supervisor.manifest import ManifestError
from supervisor.owner import Supervisor

AGENTS = "tests.agents.api_agents"
IDLE = f'[agents.a]\nentry = "{AGENTS}:idle"\n'


def write(path: Path, toml: str) -> None:
    path.write_text(toml)


def read(path: Path) -> bytes:
    return path.read_bytes()


@asynccontextmanager
async def running(path: Path, toml: str) -> AsyncIterator[Supervisor]:
    write(path, toml)
    sup = Supervisor(mf.load(path))
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            await sup.wait_started(tuple(sup.slots))
            yield sup
            sup.request_shutdown()


async def test_api_agents_get_the_new_defaults_and_a_second_reload_changes_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "agents.toml"
    async with running(path, f"[defaults]\nstop_timeout = 3.0\n{IDLE}") as sup:
        await sup.load({"id": "b", "entry": f"{AGENTS}:idle"})
        assert sup.slots["b"].spec.stop_timeout == 3.0
        write(path, f"[defaults]\nstop_timeout = 4.0\n{IDLE}")
        first = await sup.reload()
        assert set(first.restarted) == {"a", "b"}
        assert sup.slots["b"].spec.stop_timeout == 4.0  # the new manifest's defaults
        second = await sup.reload()  # the same file again
        assert second.restarted == ()
        assert second.started == ()
        assert set(second.unchanged) == {"a", "b"}


async def test_a_refused_reload_removes_nothing_from_the_state_file(tmp_path: Path) -> None:
    path = tmp_path / "agents.toml"
    state = tmp_path / "state.toml"
    head = '[supervisor]\nstate_file = "state.toml"\n'
    async with running(path, head + IDLE) as sup:
        await sup.load({"id": "b", "entry": f"{AGENTS}:idle"})
        await sup.load({"id": "c", "entry": f"{AGENTS}:idle", "after": ["a"]})
        before = read(state)
        # The manifest now declares b (it would win) but drops a, which c is after: refused.
        write(path, head + f'[agents.b]\nentry = "{AGENTS}:idle"\n')
        with pytest.raises(ManifestError, match=r"agents\.c\.after"):
            await sup.reload()
        assert read(state) == before
        assert set(sup.overlay) == {"b", "c"}
        assert sup.slots["b"].source == "api"
        # Accepted (a is back): now b is the manifest's, and dropped from the state file.
        write(path, head + IDLE + f'[agents.b]\nentry = "{AGENTS}:idle"\n')
        await sup.reload()
        assert set(tomllib.loads(read(state).decode())["agents"]) == {"c"}
        assert set(sup.overlay) == {"c"}
        assert sup.slots["b"].source == "manifest"


async def test_a_reload_that_fails_to_read_answers_every_caller_and_logs_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "agents.toml"
    async with running(path, IDLE) as sup:
        # A path over 255 characters: reading it raises OSError (ENAMETOOLONG).
        write(path, IDLE + f'[agents.long]\npath = "{"x" * 300}"\n')
        replies = [sup.request_reload() for _ in range(3)]
        for reply in replies:
            with pytest.raises(ManifestError):
                await reply.wait()
        assert "reload failed, nothing changed" in caplog.text
        assert sup.reloads_failed >= 1
        assert set(sup.slots) == {"a"}
        assert sup.slots["a"].state == "running"
        write(path, IDLE)
        assert (await sup.reload()).unchanged == ("a",)  # and it still reloads
