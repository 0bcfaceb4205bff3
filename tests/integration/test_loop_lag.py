"""The loop-lag instrument: an in-process agent that blocks the loop is named and counted."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio

from supervisor import manifest as mf
from supervisor.health.lag import agent_of
from supervisor.owner import Supervisor

AGENTS = Path(__file__).parents[1] / "agents"


def manifest(tmp_path: Path, agents: str, settings: str = "") -> mf.Manifest:
    path = tmp_path / "agents.toml"
    path.write_text(f"[supervisor]\n{settings}\n{agents}")
    return mf.load(path)


BLOCKER = """
[agents.blocker]
entry = "tests.agents.health_agents:blocks_the_loop"
params = { after = 0.05, seconds = 0.3 }
[agents.calm]
entry = "tests.agents.health_agents:beats_forever"
params = { every = 0.01 }
"""


async def run_until_status(sup: Supervisor, agent_id: str, status: str) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        with trio.fail_after(30):
            while sup.slots[agent_id].status_text != status:
                await sup.slots[agent_id].changed.wait()
        sup.request_shutdown()


async def test_a_blocking_agent_is_named_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sup = Supervisor(manifest(tmp_path, BLOCKER, "loop_lag_warning = 0.1"))
    with caplog.at_level(logging.WARNING, logger="supervisor"):
        await run_until_status(sup, "blocker", "blocked")
    blocker, calm = sup.slots["blocker"], sup.slots["calm"]
    assert 0.3 <= blocker.blocked < 5
    assert blocker.blocked_steps == 1
    assert calm.blocked == 0  # it waited, it did not block
    warnings = [r.getMessage() for r in caplog.records if "held the event loop" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].startswith("blocker: held the event loop for 0.3")
    assert "(loop_lag_warning = 0.1s)" in warnings[0]


async def test_off_with_zero_and_without_inprocess_agents(tmp_path: Path) -> None:
    sup = Supervisor(manifest(tmp_path, BLOCKER, "loop_lag_warning = 0"))
    await run_until_status(sup, "blocker", "blocked")
    assert sup.slots["blocker"].blocked == 0
    assert not sup.loop_lag._installed
    processes = Supervisor(manifest(tmp_path, '[agents.p]\ncommand = "sleep 100"\n'))
    async with trio.open_nursery() as nursery:
        await nursery.start(processes.run)
        assert not processes.loop_lag._installed  # processes do not run in our loop
        processes.request_shutdown()


async def test_tasks_an_agent_starts_are_its_own() -> None:
    found: list[str | None] = []

    async def child() -> None:
        found.append(agent_of(trio.lowlevel.current_task()))

    async def slot_task() -> None:
        async with trio.open_nursery() as inner:
            inner.start_soon(child)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(slot_task, name="slot:web")
        nursery.start_soon(child)
    assert sorted(found, key=str) == [None, "web"]
