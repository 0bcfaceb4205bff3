"""The reconcile plan, pure: property tests over random live and desired sets."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from supervisor.core.plan import plan, start_order, stop_waves
from supervisor.manifest import AgentSpec

from ..conftest import make_spec

IDS = [f"a{i}" for i in range(8)]


@st.composite
def spec_sets(draw: st.DrawFn) -> dict[str, AgentSpec]:
    """A random acyclic set of specs: an agent may be `after` agents listed before it."""
    ids = draw(st.lists(st.sampled_from(IDS), unique=True))
    specs: dict[str, AgentSpec] = {}
    for n, agent_id in enumerate(ids):
        after = draw(st.lists(st.sampled_from(ids[:n]), unique=True)) if n else []
        params = {"v": draw(st.integers(0, 2))}
        specs[agent_id] = make_spec(agent_id, after=tuple(after), params=params)
    return specs


def test_plan_names_each_change() -> None:
    live = {"a": make_spec("a"), "b": make_spec("b"), "c": make_spec("c")}
    desired = {"a": make_spec("a"), "b": make_spec("b", params={"x": 1}), "d": make_spec("d")}
    p = plan(live, desired)
    assert (p.start, p.stop, p.restart, p.unchanged) == (("d",), ("c",), ("b",), ("a",))


def test_enabling_a_disabled_agent_starts_it() -> None:
    live = {"a": make_spec("a", enabled=False)}
    p = plan(live, {"a": make_spec("a")})
    assert (p.start, p.restart) == (("a",), ())


@given(live=spec_sets(), desired=spec_sets())
def test_applying_the_plan_yields_desired(
    live: dict[str, AgentSpec], desired: dict[str, AgentSpec]
) -> None:
    p = plan(live, desired)
    after = {i: s for i, s in live.items() if i not in p.stop and i not in p.restart}
    after.update({i: desired[i] for i in p.start + p.restart})
    assert after == desired
    lists = [p.start, p.stop, p.restart, p.unchanged]
    assert sorted(i for ids in lists for i in ids) == sorted(set(live) | set(desired))


@given(live=spec_sets(), desired=spec_sets())
def test_unchanged_agents_are_never_touched(
    live: dict[str, AgentSpec], desired: dict[str, AgentSpec]
) -> None:
    p = plan(live, desired)
    touched = set(p.start) | set(p.stop) | set(p.restart)
    for agent_id in p.unchanged:
        assert live[agent_id] == desired[agent_id]
        assert agent_id not in touched


@given(specs=spec_sets())
def test_start_order_respects_after(specs: dict[str, AgentSpec]) -> None:
    order = start_order(specs, specs)
    assert sorted(order) == sorted(specs)
    for agent_id, spec in specs.items():
        for dep in spec.after:
            assert order.index(dep) < order.index(agent_id)


@given(specs=spec_sets())
def test_stop_waves_stop_dependents_first(specs: dict[str, AgentSpec]) -> None:
    waves = stop_waves(specs, specs)
    wave_of = {i: n for n, wave in enumerate(waves) for i in wave}
    assert sorted(wave_of) == sorted(specs)
    for agent_id, spec in specs.items():
        for dep in spec.after:
            assert wave_of[agent_id] < wave_of[dep]


def test_independent_agents_stop_in_one_wave() -> None:
    specs = {i: make_spec(i) for i in "abc"}
    assert stop_waves(specs, specs) == [("a", "b", "c")]


def test_long_chain_has_no_recursion_limit() -> None:
    ids = [f"a{i}" for i in range(5000)]
    specs = {i: make_spec(i, after=(ids[n - 1],) if n else ()) for n, i in enumerate(ids)}
    assert start_order(ids, specs) == ids
