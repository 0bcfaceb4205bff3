"""The etcd coordinator against a real etcd: leases, claims, releases, watches, expiry.

One etcd serves the module; each test works in a namespace of its own.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import trio

from supervisor.cluster import Compacted, Unavailable, parse_cluster_address
from supervisor.cluster.coordinator import Batch, Change, EtcdCoordinator, Holder
from supervisor.cluster.lease import Lifeline, keep_alive_in_thread

from ..etcd_harness import EtcdServer, PausableProxy, free_port, needs_etcd

pytestmark = needs_etcd
_namespaces = itertools.count()


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    with EtcdServer(tmp_path_factory.mktemp("etcd") / "data") as server:
        yield server


@pytest.fixture
async def coord(etcd: EtcdServer) -> AsyncIterator[EtcdCoordinator]:
    c = EtcdCoordinator([etcd.url], f"test{next(_namespaces)}", timeout=2.0)
    try:
        yield c
    finally:
        await c.aclose()


async def next_changes(batches: AsyncIterator[Batch], count: int) -> list[Change]:
    """The next `count` changes the watch sees (within 10 s)."""
    seen: list[Change] = []
    with trio.fail_after(10):
        while len(seen) < count:
            seen.extend((await anext(batches)).changes)
    return seen


def test_cluster_address_parsing() -> None:
    a = parse_cluster_address("etcd://10.0.0.1:2379,etcd-1.etcd:2379/shop")
    assert a.endpoints == ("http://10.0.0.1:2379", "http://etcd-1.etcd:2379")
    assert a.namespace == "shop"
    assert parse_cluster_address("etcd://localhost:2379").namespace == "supervisor"
    with pytest.raises(ValueError, match=r"expected etcd://HOST:PORT"):
        parse_cluster_address("http://localhost:2379")


async def test_a_lease_lives_while_kept_alive_and_ends_when_revoked(
    coord: EtcdCoordinator,
) -> None:
    lease = await coord.grant(1.5)
    assert lease.ttl >= 2  # whole seconds, rounded up
    assert await coord.keepalive(lease) == lease.ttl
    await coord.revoke(lease)
    assert await coord.keepalive(lease) == 0
    await coord.revoke(lease)  # a lease already gone is fine


async def test_a_claim_is_absent_to_mine_and_held_on_the_lease(coord: EtcdCoordinator) -> None:
    mine, theirs = await coord.grant(10), await coord.grant(10)
    assert await coord.claim("web", "m1", mine) is None
    assert await coord.claim("web", "m1", mine) is None  # a repeat, as after a retry
    assert await coord.claim("web", "m2", theirs) == Holder("m1", mine.id)
    # Same name, another lease (a restarted member before its old lease expired): not it.
    assert await coord.claim("web", "m1", theirs) == Holder("m1", mine.id)
    snap = await coord.snapshot()
    assert snap.owners == {"web": Holder("m1", mine.id)}


async def test_only_the_holder_releases(coord: EtcdCoordinator) -> None:
    mine, theirs = await coord.grant(10), await coord.grant(10)
    assert await coord.claim("web", "m1", mine) is None
    await coord.release("web", theirs)
    assert (await coord.snapshot()).owners == {"web": Holder("m1", mine.id)}
    await coord.release("web", mine)
    assert (await coord.snapshot()).owners == {}
    assert await coord.claim("web", "m2", theirs) is None


async def test_the_watch_sees_members_owners_and_overlay_in_order(
    coord: EtcdCoordinator,
) -> None:
    lease = await coord.grant(10)
    snap = await coord.snapshot()
    assert (snap.members, snap.owners, snap.overlay) == ({}, {}, {})
    async with coord.watch(snap.revision) as batches:
        assert await coord.register("m1", lease) is None
        assert await coord.claim("web", "m1", lease) is None
        assert await coord.put_overlay("extra", {"command": ["true"]})
        assert not await coord.put_overlay("extra", {"command": ["false"]})  # exists
        assert await coord.delete_overlay("extra")
        assert not await coord.delete_overlay("extra")
        await coord.release("web", lease)
        changes = await next_changes(batches, 5)
    assert [(c.section, c.id) for c in changes] == [
        ("members", "m1"),
        ("owners", "web"),
        ("overlay", "extra"),
        ("overlay", "extra"),
        ("owners", "web"),
    ]
    assert changes[0].value["member"] == "m1"
    assert changes[1].value == Holder("m1", lease.id)
    assert changes[2].value == {"command": ["true"]}
    assert changes[3].value is None
    assert changes[4].value is None


async def test_an_expired_lease_frees_its_keys(coord: EtcdCoordinator) -> None:
    lease = await coord.grant(1)
    await coord.register("m1", lease)
    assert await coord.claim("web", "m1", lease) is None
    snap = await coord.snapshot()
    other = await coord.grant(10)
    async with coord.watch(snap.revision) as batches:
        # Not kept alive: etcd deletes both keys once the lease's seconds are up.
        changes = await next_changes(batches, 2)
    assert {(c.section, c.id, c.value) for c in changes} == {
        ("members", "m1", None),
        ("owners", "web", None),
    }
    assert await coord.keepalive(lease) == 0
    assert await coord.claim("web", "m2", other) is None


async def test_a_revoked_lease_frees_its_keys_at_once(coord: EtcdCoordinator) -> None:
    lease, other = await coord.grant(60), await coord.grant(60)
    await coord.register("m1", lease)
    assert await coord.claim("web", "m1", lease) is None
    await coord.revoke(lease)
    snap = await coord.snapshot()
    assert (snap.members, snap.owners) == ({}, {})
    assert await coord.claim("web", "m2", other) is None


async def test_a_second_endpoint_answers_when_the_first_is_down(etcd: EtcdServer) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    c = EtcdCoordinator([dead, etcd.url], "failover", timeout=2.0)
    try:
        lease = await c.grant(10)
        assert await c.keepalive(lease) > 0
    finally:
        await c.aclose()
    c = EtcdCoordinator([dead], "failover", timeout=2.0)
    try:
        with pytest.raises(Unavailable, match="etcd unreachable"):
            await c.grant(10)
    finally:
        await c.aclose()


async def test_a_watch_from_a_compacted_revision_says_so(
    etcd: EtcdServer, coord: EtcdCoordinator
) -> None:
    await coord.put_overlay("a", {})
    old = (await coord.snapshot()).revision
    await coord.delete_overlay("a")
    await coord.put_overlay("a", {})
    now = (await coord.snapshot()).revision
    async with httpx.AsyncClient() as http:
        answer = await http.post(f"{etcd.url}/v3/kv/compaction", json={"revision": str(now)})
        answer.raise_for_status()
    with pytest.raises(Compacted):
        async with coord.watch(old - 1) as batches:
            await anext(batches)


async def test_a_paused_proxy_answers_nothing_until_resumed(
    etcd: EtcdServer, tmp_path: Path
) -> None:
    proxy = PausableProxy(etcd.address)
    c = EtcdCoordinator([f"http://{proxy.address}"], "proxied", timeout=5.0)
    try:
        lease = await c.grant(10)
        proxy.pause()
        with trio.move_on_after(0.5) as scope:
            await c.keepalive(lease)
        assert scope.cancelled_caught
        proxy.resume()
        with trio.fail_after(5):
            assert await c.keepalive(lease) > 0
    finally:
        await c.aclose()
        proxy.close()


async def test_the_lease_lives_while_the_loop_is_blocked_for_twice_its_ttl(
    etcd: EtcdServer,
) -> None:
    """Issue 14, case 4 (load tolerance): the supervisor's loop is blocked for twice the
    ttl, as by a burst of spawns, a big manifest load or API work on saturated cores.
    The keep-alive runs in a thread with its own loop and etcd connection, so the lease
    is refreshed all along and still lives afterwards. When the keep-alive was a task of
    the supervisor's loop it could not run at all meanwhile: the lease expired and the
    member churned (fence, rejoin, agents moved between members)."""
    namespace = f"test{next(_namespaces)}"

    def connect() -> EtcdCoordinator:
        return EtcdCoordinator([etcd.url], namespace, timeout=2.0)

    coord = connect()
    try:
        sent = time.monotonic()
        lease = await coord.grant(3)
        lifeline = Lifeline(time.monotonic)
        lifeline.refreshed(sent, lease.ttl)
        ended: list[tuple[float, str]] = []

        async def keep() -> None:
            ended.append(await keep_alive_in_thread(connect, lease, sent, lifeline))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(keep)
            await trio.sleep(0.1)  # the thread is up
            time.sleep(2 * lease.ttl)  # noqa: ASYNC251 (the point: the loop is blocked)
            assert ended == []  # the keep-alive never gave up
            assert await coord.keepalive(lease) > 0  # etcd still has the lease
            nursery.cancel_scope.cancel()
    finally:
        await coord.aclose()
