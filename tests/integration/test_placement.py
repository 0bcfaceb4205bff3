"""The placement seam: the owner starts only what its placement places and allows.

A placement with a switch decides; the agents are a fake kind (a runner that counts its
starts and crashes after a second) under trio's MockClock.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from supervisor import manifest as mf
from supervisor.core.outcome import Outcome
from supervisor.core.plan import Plan
from supervisor.manifest import AgentSpec
from supervisor.owner import Conflict, Supervisor
from supervisor.placement import LocalPlacement, Placement
from supervisor.runners import Hooks
from supervisor.runners.inprocess import run_inprocess
from supervisor.runners.process import run_process
from supervisor.slot import Slot

from ..conftest import make_spec


class Switch:
    """A placement: agents in `here` are placed here; those in `allowed` may start."""

    start_group = 2

    def __init__(self, here: set[str], allowed: set[str]) -> None:
        self.here = here
        self.allowed = allowed
        self.asked: list[str] = []
        self.settled: list[Plan] = []

    @property
    def shared_overlay(self) -> Mapping[str, dict[str, Any]] | None:
        return None

    def placed(self, desired: Mapping[str, AgentSpec]) -> Mapping[str, AgentSpec]:
        return {i: s for i, s in desired.items() if i in self.here}

    async def settle(self, p: Plan) -> Plan:
        self.settled.append(p)
        await trio.lowlevel.checkpoint()
        return p

    def may_start(self, agent_id: str) -> str | None:
        self.asked.append(agent_id)
        return None if agent_id in self.allowed else "not allowed here"


class Crashing:
    """A runner: ready at once, crashes after a second; counts starts by id."""

    def __init__(self) -> None:
        self.starts: dict[str, int] = {}

    async def __call__(self, spec: AgentSpec, hooks: Hooks) -> Outcome:
        self.starts[spec.id] = self.starts.get(spec.id, 0) + 1
        hooks.launched(None)
        hooks.ready()
        await trio.sleep(1)
        return Outcome(code=1)


def _manifest(tmp_path: Path, ids: list[str]) -> mf.Manifest:
    path = tmp_path / "agents.toml"
    body = "".join(
        f'[agents.{i}]\nentry = "x:y"\nrestart = "always"\nbackoff = {{ initial = 5.0, jitter = 0.0 }}\n'
        for i in ids
    )
    path.write_text(body)
    return mf.load(path)


def test_the_local_placement_places_everything_and_allows_every_start() -> None:
    placement: Placement = LocalPlacement()
    assert placement.placed({"a": "spec"}) == {"a": "spec"}  # type: ignore[dict-item]
    assert placement.may_start("a") is None
    assert placement.shared_overlay is None
    assert placement.start_group == 0


async def test_only_placed_agents_start_and_a_restart_after_backoff_asks_first(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    switch = Switch(here={"a", "b", "c"}, allowed={"a", "b", "c"})
    runner = Crashing()
    sup = Supervisor(_manifest(tmp_path, ["a", "b", "c", "elsewhere"]), runner, switch)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        assert set(sup.slots) == {"a", "b", "c"}  # "elsewhere" is not placed here
        await trio.sleep(0.5)
        assert runner.starts == {"a": 1, "b": 1, "c": 1}
        switch.allowed.discard("b")  # e.g. the lease is lost while b backs off
        switch.asked.clear()
        await trio.sleep(6)  # crashed at 1 s, restart due at 6 s
        assert "b" in switch.asked  # asked right before the restart, not only at placement
        assert runner.starts["a"] == 2
        assert runner.starts["b"] == 1
        b = sup.slots["b"]
        assert (b.state, b.reason, b.refused) == (
            "stopped",
            "not started: not allowed here",
            "not allowed here",
        )
        with pytest.raises(Conflict, match="not allowed here"):
            await sup.start("b")
        switch.allowed.add("b")
        sup.request_reconcile()  # allowed again: the reconcile launches it again
        await trio.sleep(0.5)
        assert sup.slots["b"].state == "running"
        assert runner.starts["b"] == 2
        sup.request_shutdown()


async def test_starts_go_in_groups_each_checked_right_before_it_starts(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    ids = [f"a{n}" for n in range(5)]
    switch = Switch(here=set(ids), allowed=set(ids) - {"a3"})
    sup = Supervisor(_manifest(tmp_path, ids), Crashing(), switch)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        assert set(sup.slots) == set(ids) - {"a3"}  # a3 refused before a slot was made
        assert switch.settled
        assert switch.settled[0].start == tuple(ids)
        sup.request_shutdown()


class DeadlinePassesInSetup:
    """`may_start` for one agent: yes at the slot's check before an attempt, no from then
    on, as when the lease's deadline passes while the runner sets the run up (the member
    paused while it opened the notify socket, or imported a folder agent's files)."""

    def __init__(self) -> None:
        self.asked = 0

    def __call__(self, agent_id: str) -> str | None:
        self.asked += 1
        return None if self.asked == 1 else "this member's cluster lease is not provably live"


@pytest.mark.parametrize("kind", ["process", "in-process"])
async def test_a_deadline_that_passes_during_the_runners_setup_spawns_nothing(
    tmp_path: Path, kind: str
) -> None:
    """Issue 14, the last window of case 1: between the slot's `may_start` and the spawn
    the process runner awaits (it binds the agent's notify socket) and the in-process
    runner imports the entry; a lease deadline passing there used to start the agent on
    a dead lease anyway. The runner now asks `may_spawn` as its very last step: nothing
    runs, and the slot ends `stopped`, refused, for the owner to relaunch once allowed."""
    ran = tmp_path / "ran"
    if kind == "process":
        keys: dict[str, Any] = {"command": ["sh", "-c", f"touch {ran}"], "ready": "notify"}
        runner: Any = run_process
    else:
        keys = {"entry": "agents.inproc_agents:returns"}  # run, it would end `exited`
        runner = run_inprocess
    may_start = DeadlinePassesInSetup()
    slot = Slot(make_spec("a", **keys), runner, may_start=may_start)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            slot.launch(nursery)
            await slot.wait_stopped()
    assert may_start.asked == 2  # the slot's check, then the runner's last one
    assert not ran.exists()
    assert slot.pid is None
    why = "this member's cluster lease is not provably live"
    assert (slot.state, slot.refused, slot.reason) == ("stopped", why, f"not started: {why}")
    assert slot.restarts == 0
