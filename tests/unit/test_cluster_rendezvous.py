"""Rendezvous hashing, pure: every member computes the same owners, spread evenly, and a
join or a leave moves only the keys it must (about 1/N of them)."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor.cluster.rendezvous import Placement, owner, placement_keys, score

NAMES = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789-."), min_size=1, max_size=12)
MEMBER_SETS = st.lists(NAMES, min_size=1, max_size=7, unique=True)
KEYS = [f"agent-{i}" for i in range(3000)]


def spread(expected: float, n: int) -> float:
    """Six standard deviations of a binomial count: a test that fails by chance about once
    in a billion runs, and still catches a skewed hash (well under 30% of `expected`)."""
    p = expected / n
    return 6 * math.sqrt(n * p * (1 - p))


def test_score_is_pinned() -> None:
    # Members in different processes, versions and machines must agree: pin the hash.
    assert score("m1", "web") == 0xEEF456DD31DEDE6A
    assert score("m1", "web") != score("m2", "web")
    assert score("m1", "web") != score("m1", "web2")


def test_no_members_no_owner() -> None:
    assert owner("web", []) is None
    assert Placement([]).owner("web") is None


@given(members=MEMBER_SETS, key=NAMES, data=st.data())
def test_owner_is_a_member_whatever_the_order(
    members: list[str], key: str, data: st.DataObject
) -> None:
    shuffled = data.draw(st.permutations(members))
    assert owner(key, members) == owner(key, shuffled) == Placement(shuffled).owner(key)
    assert owner(key, members) in members


@settings(max_examples=20, deadline=None)
@given(members=st.lists(NAMES, min_size=2, max_size=6, unique=True))
def test_keys_spread_evenly(members: list[str]) -> None:
    counts = dict.fromkeys(members, 0)
    for member in Placement(members).assign(KEYS).values():
        assert member is not None
        counts[member] += 1
    expected = len(KEYS) / len(members)
    for member, count in counts.items():
        assert abs(count - expected) <= spread(expected, len(KEYS)), (member, counts)


@settings(max_examples=20, deadline=None)
@given(members=MEMBER_SETS, newcomer=NAMES)
def test_a_join_moves_about_one_nth_and_only_to_the_newcomer(
    members: list[str], newcomer: str
) -> None:
    if newcomer in members:
        return
    before = Placement(members).assign(KEYS)
    after = Placement([*members, newcomer]).assign(KEYS)
    moved = [k for k in KEYS if before[k] != after[k]]
    assert all(after[k] == newcomer for k in moved)
    expected = len(KEYS) / (len(members) + 1)
    assert abs(len(moved) - expected) <= spread(expected, len(KEYS))


@settings(max_examples=20, deadline=None)
@given(members=st.lists(NAMES, min_size=2, max_size=7, unique=True), data=st.data())
def test_a_leave_moves_only_the_leavers_keys(members: list[str], data: st.DataObject) -> None:
    leaver = data.draw(st.sampled_from(members))
    before = Placement(members).assign(KEYS)
    after = Placement([m for m in members if m != leaver]).assign(KEYS)
    for key in KEYS:
        if before[key] == leaver:
            assert after[key] != leaver
        else:
            assert after[key] == before[key]


@st.composite
def after_graphs(draw: st.DrawFn) -> dict[str, list[str]]:
    ids = draw(st.lists(st.sampled_from([f"a{i}" for i in range(10)]), unique=True))
    return {i: draw(st.lists(st.sampled_from([*ids, "elsewhere"]), max_size=3)) for i in ids}


def components(graph: dict[str, list[str]]) -> list[set[str]]:
    """Connected components of the undirected `after` graph, by plain search."""
    links: dict[str, set[str]] = {i: set() for i in graph}
    for i, deps in graph.items():
        for dep in deps:
            if dep in graph:
                links[i].add(dep)
                links[dep].add(i)
    seen: set[str] = set()
    found = []
    for start in graph:
        if start not in seen:
            group: set[str] = set()
            todo = [start]
            while todo:
                i = todo.pop()
                if i not in group:
                    group.add(i)
                    todo.extend(links[i])
            seen |= group
            found.append(group)
    return found


@given(graph=after_graphs())
def test_agents_linked_by_after_are_placed_by_their_groups_least_id(
    graph: dict[str, list[str]],
) -> None:
    keys = placement_keys(graph)
    assert set(keys) == set(graph)
    for group in components(graph):
        assert {keys[i] for i in group} == {min(group)}


def test_placement_keys_example() -> None:
    keys = placement_keys({"web": ["db"], "db": [], "worker": ["db", "gone"], "solo": []})
    assert keys == {"web": "db", "db": "db", "worker": "db", "solo": "solo"}
