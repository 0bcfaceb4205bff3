"""The owner under random sequences of reloads, loads, unloads, crashes and controls.

Hypothesis draws a sequence of operations; each runs against a real `Supervisor` with
real in-process agents under trio's MockClock, and a plain model says what the end state
must be. After quiescence the live set must equal the desired set, each agent must run
its latest spec in the expected state, no two runs of one agent may ever have overlapped,
and after shutdown nothing may be left running.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest
import tomli_w
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervisor import manifest as mf
from supervisor.owner import Conflict, NotFound, Supervisor
from supervisor.runners.dispatch import make_runner

from ..agents import owner_agents as agents

IDS = ["a", "b", "c", "d"]
ENTRY = "tests.agents.owner_agents:main"
KEYS = {"entry": ENTRY, "max_restarts": 1000, "backoff": {"initial": 0.5, "jitter": 0.0}}

versions = st.dictionaries(st.sampled_from(IDS), st.integers(0, 2), max_size=4)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("reload"), versions),
        st.tuples(st.just("load"), st.sampled_from(IDS), st.integers(0, 2)),
        st.tuples(
            st.sampled_from(["unload", "crash", "stop", "start", "restart"]), st.sampled_from(IDS)
        ),
    ),
    max_size=25,
)


@attrs.define
class Model:
    """What the end state must be."""

    manifest: dict[str, int]
    overlay: dict[str, int] = attrs.field(factory=dict)
    stopped: set[str] = attrs.field(factory=set)

    def version(self, agent_id: str) -> int | None:
        return self.manifest.get(agent_id, self.overlay.get(agent_id))


def write_manifest(path: Path, agents_v: dict[str, int]) -> None:
    tables = {i: {**KEYS, "params": {"v": v}} for i, v in agents_v.items()}
    path.write_text(tomli_w.dumps({"agents": tables}))


async def apply(sup: Supervisor, model: Model, path: Path, op: tuple[Any, ...]) -> None:
    """Run `op` against the supervisor and the model alike."""
    kind, agent_id = op[0], op[1]
    if kind == "reload":
        write_manifest(path, op[1])
        await sup.reload()
        for i, v in op[1].items():
            if model.version(i) != v:
                model.stopped.discard(i)  # a changed agent is started afresh
            model.overlay.pop(i, None)
        model.stopped &= set(op[1]) | set(model.overlay)
        model.manifest = dict(op[1])
        return
    known = model.version(agent_id) is not None
    if kind == "load":
        table = {"id": agent_id, **KEYS, "params": {"v": op[2]}}
        if known:
            with pytest.raises(Conflict):
                await sup.load(table)
        else:
            await sup.load(table)
            model.overlay[agent_id] = op[2]
    elif not known:
        with pytest.raises(NotFound):
            await getattr(sup, kind if kind != "crash" else "stop")(agent_id)
    elif kind == "unload":
        if agent_id in model.manifest:
            with pytest.raises(Conflict):
                await sup.unload(agent_id)
        else:
            await sup.unload(agent_id)
            del model.overlay[agent_id]
            model.stopped.discard(agent_id)
    elif kind == "crash":
        if agent_id in agents.CRASH:
            agents.CRASH[agent_id].set()
    elif kind == "stop":
        await sup.stop(agent_id)
        model.stopped.add(agent_id)
    else:  # start, restart
        await getattr(sup, kind)(agent_id)
        model.stopped.discard(agent_id)


async def scenario(path: Path, first: dict[str, int], ops: list[tuple[Any, ...]]) -> None:
    write_manifest(path, first)
    sup = Supervisor(mf.load(path), make_runner())
    model = Model(manifest=dict(first))
    with trio.fail_after(100_000):
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            for op in ops:
                await apply(sup, model, path, op)
            await trio.sleep(100)  # past every backoff: quiescent
            await trio.testing.wait_all_tasks_blocked()
            expected = {i for i in IDS if model.version(i) is not None}
            assert set(sup.slots) == expected
            for agent_id, slot in sup.slots.items():
                assert slot.spec.params == {"v": model.version(agent_id)}
                want = "stopped" if agent_id in model.stopped else "running"
                assert slot.state == want, (agent_id, slot.reason)
                assert agents.RUNNING[agent_id] == (want == "running")
            sup.request_shutdown()
    assert not agents.OVERLAPS
    assert not +agents.RUNNING  # nothing left running


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(first=versions, ops=operations)
def test_owner_converges_to_the_model(
    tmp_path: Path, first: dict[str, int], ops: list[Any]
) -> None:
    agents.RUNNING.clear()
    agents.OVERLAPS.clear()
    agents.CRASH.clear()
    clock = trio.testing.MockClock(autojump_threshold=0)
    trio.run(scenario, tmp_path / "agents.toml", first, ops, clock=clock)
