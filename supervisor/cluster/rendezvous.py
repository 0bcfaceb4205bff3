"""Rendezvous (highest-random-weight) hashing: which member runs which agent. Pure.

Every member scores every key with a hash of ``(member, key)``; the key belongs to the
member with the highest score. Each member computes this alone, from the same list of
live members, and they all agree without talking. When a member joins, it wins only the
keys it now outscores everyone on (about 1/N of them); when one leaves, only its own keys
move, each to the runner-up. No other key changes hands, so no other agent restarts.

Agents linked by `after` must share a member (a slot waits for what it is `after` in its
own supervisor), so `placement_keys` maps each agent to its group's key, and groups are
placed whole.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence


def score(member: str, key: str) -> int:
    """The weight of `member` for `key`: a stable 64-bit hash, the same in every process.

    Python's `hash()` is salted per process, so it cannot be used: members must agree.
    """
    data = member.encode() + b"\0" + key.encode()  # neither holds NUL: no two pairs collide
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def owner(key: str, members: Iterable[str]) -> str | None:
    """The member that owns `key`, or None when there are no members.

    Ties (astronomically rare) go to the greater name, so the answer never depends on
    the order of `members`.
    """
    best: tuple[int, str] | None = None
    for member in members:
        candidate = (score(member, key), member)
        if best is None or candidate > best:
            best = candidate
    return None if best is None else best[1]


class Placement:
    """The owners of keys for one fixed set of members, computed once per key.

    Membership changes rarely and keys are asked about on every reconcile, so a placement
    is built per membership and remembers its answers. Sync, never blocks.
    """

    def __init__(self, members: Iterable[str]) -> None:
        self.members: tuple[str, ...] = tuple(sorted(set(members)))
        self._owners: dict[str, str | None] = {}

    def owner(self, key: str) -> str | None:
        try:
            return self._owners[key]
        except KeyError:
            found = self._owners[key] = owner(key, self.members)
            return found

    def assign(self, keys: Iterable[str]) -> dict[str, str | None]:
        """{key: owner} for each of `keys`."""
        return {key: self.owner(key) for key in keys}


def placement_keys(after: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """Map each agent id to the key it is placed by: the least id of its `after` group.

    `after` maps each id to the ids it is `after`; names outside the mapping are
    ignored (they are not desired, so they are nowhere). Agents joined by `after` links,
    in either direction, form one group and are placed together.
    """
    parent = {i: i for i in after}

    def root(i: str) -> str:
        while parent[i] != i:
            parent[i] = parent[parent[i]]  # path halving keeps the trees flat
            i = parent[i]
        return i

    for i, deps in after.items():
        for dep in deps:
            if dep in parent:
                a, b = root(i), root(dep)
                if a != b:
                    parent[max(a, b)] = min(a, b)  # the least id stays the root
    return {i: root(i) for i in after}
