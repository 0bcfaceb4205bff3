"""A member's timeline, under trio's MockClock, against an in-memory coordinator that a
test can make slow or forgetful: when a lost lease stops the agents, what a lost lease
lets start, how claims wait for releases and for other members' keys."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from supervisor import manifest as mf
from supervisor.cluster import Refused, Unavailable
from supervisor.cluster.coordinator import Batch, Change, Holder, Lease, Snapshot
from supervisor.cluster.member import ClusterMember
from supervisor.cluster.placement import ClusterPlacement
from supervisor.cluster.rendezvous import owner
from supervisor.core.outcome import Outcome
from supervisor.manifest import AgentSpec
from supervisor.owner import Supervisor
from supervisor.runners import Hooks

from ..conftest import make_spec

TTL = 6.0


class MemoryCoordinator:
    """The `Coordinator` over dicts. `cut()` makes every call wait until `resume()` (etcd
    cut off); `forget(lease)` ends a lease as etcd would once it expired; `lose_data()`
    empties it (etcd back on an empty data folder), and `end_quiet()` ends the quiet
    period of a founding. It starts founded (an epoch, no quiet period)."""

    def __init__(self) -> None:
        self.epoch: str | None = "e0"
        self.settling = False
        self.epochs = 0
        self.leases: set[int] = set()
        self.revoked: list[int] = []
        self.members: dict[str, dict[str, Any]] = {}
        self.owners: dict[str, Holder] = {}
        self.overlay: dict[str, dict[str, Any]] = {}
        self.revision = 0
        self._open = trio.Event()
        self._open.set()
        self.claims_open = trio.Event()
        self.claims_open.set()
        self.calls: list[str] = []
        self._watchers: list[trio.MemorySendChannel[Batch]] = []
        self._next = 100

    async def _call(self, name: str) -> None:
        self.calls.append(name)
        await trio.lowlevel.checkpoint()
        await self._open.wait()  # cut off: no answer, as through a paused proxy

    def _publish(self, *changes: Change) -> None:
        self.revision += 1
        for send in self._watchers:
            send.send_nowait(Batch(self.revision, changes))

    def cut(self) -> None:
        self._open = trio.Event()

    def resume(self) -> None:
        self._open.set()

    def forget(self, lease: int) -> None:
        self.leases.discard(lease)
        gone = [Change("owners", i, None) for i, h in self.owners.items() if h.lease == lease]
        gone += [Change("members", m, None) for m, v in self.members.items() if v["lease"] == lease]
        self.owners = {i: h for i, h in self.owners.items() if h.lease != lease}
        self.members = {m: v for m, v in self.members.items() if v["lease"] != lease}
        self._publish(*gone)

    def lose_data(self) -> None:
        """Everything is gone, and nobody is told (as a restarted, empty etcd)."""
        self.leases.clear()
        self.members, self.owners, self.overlay = {}, {}, {}
        self.epoch, self.settling, self.revision = None, False, 0

    def end_quiet(self) -> None:
        self.settling = False
        self._publish(Change("settling", "", None))

    async def found(self, ttl: float) -> str:
        await self._call("found")
        if self.epoch is None:
            self.epochs += 1
            self.epoch, self.settling = f"e{self.epochs}", True
            self._publish(Change("epoch", "", self.epoch), Change("settling", "", True))
        return self.epoch

    async def reset_epoch(self, epoch: str) -> None:
        await self._call("reset_epoch")
        if self.epoch == epoch:
            self.epoch = None
            self._publish(Change("epoch", "", None))

    async def grant(self, ttl: float) -> Lease:
        await self._call("grant")
        self._next += 1
        self.leases.add(self._next)
        return Lease(self._next, ttl)

    async def keepalive(self, lease: Lease) -> float:
        await self._call("keepalive")
        return lease.ttl if lease.id in self.leases else 0.0

    async def revoke(self, lease: Lease) -> None:
        await self._call("revoke")
        self.revoked.append(lease.id)
        self.forget(lease.id)

    async def register(self, member: str, lease: Lease) -> Holder | None:
        await self._call("register")
        self.members[member] = {"member": member, "lease": lease.id}
        self._publish(Change("members", member, self.members[member]))
        return None

    async def claim(self, agent_id: str, member: str, lease: Lease) -> Holder | None:
        await self._call("claim")
        await self.claims_open.wait()  # a new unset Event: etcd is slow to answer claims
        if lease.id not in self.leases:
            raise Refused("etcdserver: requested lease not found")
        if agent_id not in self.owners:
            self.owners[agent_id] = Holder(member, lease.id)
            self._publish(Change("owners", agent_id, self.owners[agent_id]))
        holder = self.owners[agent_id]
        return None if holder == Holder(member, lease.id) else holder

    async def release(self, agent_id: str, lease: Lease) -> None:
        await self._call("release")
        if agent_id in self.owners and self.owners[agent_id].lease == lease.id:
            del self.owners[agent_id]
            self._publish(Change("owners", agent_id, None))

    async def snapshot(self) -> Snapshot:
        await self._call("snapshot")
        return Snapshot(
            self.revision,
            dict(self.members),
            dict(self.owners),
            dict(self.overlay),
            self.epoch,
            self.settling,
        )

    @asynccontextmanager
    async def watch(self, revision: int) -> AsyncIterator[AsyncIterator[Batch]]:
        send, receive = trio.open_memory_channel[Batch](math.inf)
        self._watchers.append(send)
        try:
            yield receive
        finally:
            self._watchers.remove(send)

    async def put_overlay(self, agent_id: str, table: dict[str, Any]) -> bool:
        raise NotImplementedError

    async def delete_overlay(self, agent_id: str) -> bool:
        raise NotImplementedError

    async def aclose(self) -> None:
        pass


class Owner:
    """Stands in for the supervisor: counts reconcile requests, records fences."""

    def __init__(self) -> None:
        self.reconciles = 0
        self.fences: list[tuple[float, float]] = []  # (when, deadline)
        self.reconciled = trio.Event()
        self.fenced = trio.Event()

    def reconcile(self) -> None:
        self.reconciles += 1
        self.reconciled.set()
        self.reconciled = trio.Event()

    async def fence(self, deadline: float) -> None:
        self.fences.append((trio.current_time(), deadline))
        self.fenced.set()


@pytest.fixture
def store() -> MemoryCoordinator:
    return MemoryCoordinator()


async def joined(
    nursery: trio.Nursery, store: MemoryCoordinator, name: str = "m1"
) -> tuple[ClusterMember, Owner]:
    member, owner = ClusterMember(store, name, TTL), Owner()
    await nursery.start(member.run, owner.reconcile, owner.fence)
    while member.lease is None:
        await owner.reconciled.wait()
    return member, owner


async def test_a_member_that_loses_etcd_stops_everything_before_its_lease_can_expire(
    store: MemoryCoordinator, autojump_clock: trio.testing.MockClock
) -> None:
    async with trio.open_nursery() as nursery:
        member, owner = await joined(nursery, store)
        spec = make_spec("web")
        assert member.mine({"web": spec}) == {"web": spec}
        assert await member.claim(["web"]) == {"web"}
        await trio.sleep(10)  # refreshes keep it going
        assert member.holds("web")
        last_refresh = trio.current_time()
        store.cut()
        await owner.fenced.wait()
        when, deadline = owner.fences[0]
        # Given up once half the ttl may be left; stopped a tenth before it could expire.
        assert last_refresh < when <= last_refresh + TTL / 2 + 0.01
        assert deadline == pytest.approx(when + TTL / 2 - TTL / 10, abs=TTL / 6)
        assert deadline < last_refresh + TTL
        # Nothing is this member's now, and nothing can be claimed.
        assert not member.holds("web")
        assert member.mine({"web": spec}) == {}
        assert await member.claim(["web"]) == set()
        nursery.cancel_scope.cancel()


async def test_a_lease_found_gone_stops_everything_at_once(
    store: MemoryCoordinator, autojump_clock: trio.testing.MockClock
) -> None:
    async with trio.open_nursery() as nursery:
        member, owner = await joined(nursery, store)
        assert member.lease is not None
        store.forget(member.lease.id)  # e.g. the member was frozen past its ttl
        await owner.fenced.wait()
        when, deadline = owner.fences[0]
        assert deadline == when
        nursery.cancel_scope.cancel()


async def test_after_a_loss_it_revokes_the_old_lease_and_joins_anew(
    store: MemoryCoordinator, autojump_clock: trio.testing.MockClock
) -> None:
    async with trio.open_nursery() as nursery:
        member, owner = await joined(nursery, store)
        first = member.lease
        assert first is not None
        assert await member.claim(["web"]) == {"web"}
        store.cut()
        await owner.fenced.wait()
        store.resume()
        while member.lease is None:
            await owner.reconciled.wait()
        assert member.lease.id != first.id
        assert store.revoked == [first.id]  # its keys went at once: web is free
        assert "web" not in store.owners
        assert await member.claim(["web"]) == {"web"}
        nursery.cancel_scope.cancel()
    assert member.sessions == 2


async def test_a_claim_held_elsewhere_waits_for_the_release(
    store: MemoryCoordinator, autojump_clock: trio.testing.MockClock
) -> None:
    moving = next(i for i in (f"a{n}" for n in range(100)) if owner(i, ["m1", "m2"]) == "m2")
    async with trio.open_nursery() as nursery:
        m1, _ = await joined(nursery, store, "m1")
        assert await m1.claim([moving]) == {moving}  # alone, m1 runs everything
        m2, owner2 = await joined(nursery, store, "m2")
        assert await m2.claim([moving]) == set()  # m1 still holds it (still stopping)
        before = owner2.reconciles
        m1.release([moving])
        await owner2.reconciled.wait()  # the delete wakes the member that waits for it
        assert owner2.reconciles > before
        assert await m2.claim([moving]) == {moving}
        nursery.cancel_scope.cancel()


async def test_a_key_won_for_an_agent_a_newcomer_owns_is_handed_on_unstarted(
    store: MemoryCoordinator, autojump_clock: trio.testing.MockClock
) -> None:
    moving = next(i for i in (f"a{n}" for n in range(100)) if owner(i, ["m1", "m2"]) == "m2")
    async with trio.open_nursery() as nursery:
        m1, _ = await joined(nursery, store, "m1")
        await joined(nursery, store, "m2")
        assert await m1.claim([moving]) == set()
        await trio.sleep(1)
        assert moving not in store.owners
        nursery.cancel_scope.cancel()


async def test_a_claim_waits_for_its_own_pending_release(
    store: MemoryCoordinator, autojump_clock: trio.testing.MockClock
) -> None:
    async with trio.open_nursery() as nursery:
        member, _ = await joined(nursery, store)
        assert await member.claim(["web"]) == {"web"}
        member.release(["web"])  # the delete goes out in the background
        assert await member.claim(["web"]) == {"web"}
        await trio.sleep(1)
        # Had the release run after the claim, it would have deleted the new key.
        assert store.owners["web"] == Holder("m1", member.lease.id if member.lease else 0)
        nursery.cancel_scope.cancel()


async def test_leaving_revokes_the_lease(
    store: MemoryCoordinator, autojump_clock: trio.testing.MockClock
) -> None:
    async with trio.open_nursery() as nursery:
        member, _ = await joined(nursery, store)
        lease = member.lease
        assert lease is not None
        nursery.cancel_scope.cancel()
    assert store.revoked == [lease.id]
    assert store.members == {}


async def test_a_join_that_cannot_reach_etcd_keeps_trying(
    store: MemoryCoordinator, autojump_clock: trio.testing.MockClock
) -> None:
    failures = 0

    async def flaky_grant(ttl: float) -> Lease:
        nonlocal failures
        if failures < 3:
            failures += 1
            raise Unavailable("etcd unreachable: connection refused")
        return Lease(7, ttl)

    store.grant = flaky_grant  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        member, _ = await joined(nursery, store)
        assert member.lease == Lease(7, TTL)
        nursery.cancel_scope.cancel()


async def test_a_start_is_allowed_only_while_the_lease_provably_lives_by_the_clock(
    store: MemoryCoordinator, autojump_clock: trio.testing.MockClock
) -> None:
    """Issue 14, case 1, deterministically: after a freeze longer than the ttl the key
    still looks held (the keep-alive has not run yet), and a start must be refused by the
    clock alone. When holding was a flag only the keep-alive cleared, `holds()` said yes
    here, and a thawed member started agents on its dead lease."""
    async with trio.open_nursery() as nursery:
        member, _ = await joined(nursery, store)
        assert await member.claim(["web"]) == {"web"}
        assert member.may_start("web") is None
        assert member.may_start("other") == "this member does not hold the agent's cluster key"
        # The process was frozen for a ttl (SIGSTOP): the first code to run after it may
        # be a start, before the keep-alive noticed anything. The key still looks held,
        # but the lease is not provably live any more: nothing starts.
        clock = member.lifeline.clock
        member.lifeline.clock = lambda: clock() + TTL
        assert "web" in member.held
        assert member.lease is not None
        assert member.may_start("web") == "this member's cluster lease is not provably live"
        assert not member.holds("web")
        member.lifeline.clock = clock
        assert member.holds("web")
        nursery.cancel_scope.cancel()


async def test_starts_end_half_a_ttl_after_the_last_answered_refresh_was_sent(
    store: MemoryCoordinator, autojump_clock: trio.testing.MockClock
) -> None:
    async with trio.open_nursery() as nursery:
        member, _ = await joined(nursery, store)
        assert await member.claim(["web"]) == {"web"}
        await trio.sleep(TTL / 6 + 0.01)  # just after a refresh
        store.cut()
        last = member.lifeline.until - TTL / 2  # when that refresh was sent
        await trio.sleep_until(last + TTL / 2 - 0.01)
        assert member.holds("web")
        await trio.sleep_until(last + TTL / 2)
        assert not member.holds("web")
        nursery.cancel_scope.cancel()


async def test_a_store_that_lost_its_data_is_quiet_for_a_ttl_before_anything_is_claimed(
    store: MemoryCoordinator, autojump_clock: trio.testing.MockClock
) -> None:
    """Issue 14, case 2, deterministically: the store loses its data while m1 runs web;
    m2, new, must not claim web while m1 may still run it. Without the epoch key and its
    quiet founding, m2 saw a free key and claimed it at once: a double until m1's next
    refresh."""
    async with trio.open_nursery() as nursery:
        m1, owner1 = await joined(nursery, store, "m1")
        assert await m1.claim(["web"]) == {"web"}
        store.lose_data()  # etcd back on an empty data folder: m1 is not told
        m2, owner2 = await joined(nursery, store, "m2")  # a member that knew nothing before
        assert store.epoch == "e1"
        assert store.settling
        # m1 may still run web until its next refresh: m2 must not claim it yet.
        assert await m2.claim(["web"]) == set()
        await owner1.fenced.wait()  # m1's refresh finds its lease gone: stop now
        when, deadline = owner1.fences[0]
        assert deadline == when
        store.end_quiet()  # etcd ended the quiet period's lease (one ttl)
        await owner2.reconciled.wait()  # the watch saw it: claim now
        assert await m2.claim(["web"]) == {"web"}
        while m1.lease is None:
            await owner1.reconciled.wait()
        assert m1.may_start("web") is not None
        nursery.cancel_scope.cancel()


async def test_a_member_that_sees_the_epoch_change_stops_everything_at_once(
    store: MemoryCoordinator, autojump_clock: trio.testing.MockClock
) -> None:
    async with trio.open_nursery() as nursery:
        member, owner = await joined(nursery, store)
        assert await member.claim(["web"]) == {"web"}
        await store.reset_epoch("e0")  # seen through the watch, before any refresh
        await owner.fenced.wait()
        when, deadline = owner.fences[0]
        assert deadline == when
        assert not member.holds("web")
        # It joins again in a new epoch, founded quietly: nothing is claimed meanwhile.
        # (Conditions, not reconcile events: trio shuffles the order of ready tasks, so
        # the reconcile may come before the wait starts.)
        await eventually(lambda: member.lease is not None)
        assert store.epoch == "e1"
        assert await member.claim(["web"]) == set()
        store.end_quiet()
        for _ in range(300):
            if await member.claim(["web"]) == {"web"}:
                break
            await trio.sleep(0.1)
        else:
            raise AssertionError("web never claimed after the quiet founding ended")
        nursery.cancel_scope.cancel()


async def test_agents_fenced_while_claims_are_in_flight_start_again_after_the_rejoin(
    store: MemoryCoordinator, autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Issue 14, case 3, deterministically: the lease is lost and the member rejoins
    while the owner still waits on a claim. Every agent must be claimed and started
    again. Before, the reconcile queued by the fence saw unchanged specs and did
    nothing: a and b stayed `stopped` for good."""
    path = tmp_path / "agents.toml"
    body = "".join(f'[agents.{i}]\nentry = "x:y"\n' for i in ("a", "b"))
    path.write_text(body)
    runner = Counting()
    member = ClusterMember(store, "m1", TTL)
    sup = Supervisor(mf.load(path), runner, ClusterPlacement(member))
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await nursery.start(member.run, sup.request_reconcile, sup.fence)
        await eventually(lambda: runner.running == {"a", "b"})
        # A third agent arrives; etcd is slow to answer its claim. Meanwhile the lease
        # is lost (a, b are fenced) and the member joins again, all before the owner is
        # done waiting on that claim.
        store.claims_open = trio.Event()
        path.write_text(body + '[agents.c]\nentry = "x:y"\n')
        sup.request_reload()
        await trio.sleep(0.1)
        assert member.lease is not None
        first = member.lease
        store.forget(first.id)
        await eventually(lambda: member.lease is not None and member.lease is not first)
        store.claims_open.set()
        await eventually(lambda: runner.running == {"a", "b", "c"})
        assert runner.starts == {"a": 2, "b": 2, "c": 1}
        sup.request_shutdown()
        nursery.cancel_scope.cancel()


async def eventually(condition: Callable[[], bool], within: float = 30) -> None:
    """Wait (trio time) until `condition()` holds; fail after `within` seconds."""
    for _ in range(int(within * 10)):
        if condition():
            return
        await trio.sleep(0.1)
    raise AssertionError(f"not within {within}s: {condition}")


class Counting:
    """A runner: ready at once, runs until stopped; tracks what runs and counts starts."""

    def __init__(self) -> None:
        self.starts: dict[str, int] = {}
        self.running: set[str] = set()

    async def __call__(self, spec: AgentSpec, hooks: Hooks) -> Outcome:
        self.starts[spec.id] = self.starts.get(spec.id, 0) + 1
        self.running.add(spec.id)
        hooks.launched(None)
        hooks.ready()
        try:
            await trio.sleep_forever()
        finally:
            self.running.discard(spec.id)
