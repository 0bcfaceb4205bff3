"""A member's ownership keys: claimed before an agent starts, released after it stopped.

A claim is a create-if-absent transaction attached to the member's lease; a release
deletes the key only while that lease holds it. Releases go out in the background (the
owner must never wait on etcd to stop an agent), and a later claim of the same id waits
for its pending release, so the two cannot cross.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Sequence

import trio

from supervisor.cluster import Refused, Unavailable
from supervisor.cluster.coordinator import Coordinator, Lease
from supervisor.cluster.view import ClusterView
from supervisor.logs import log

CLAIMS_AT_ONCE = 32  # concurrent calls to the store for claims and releases


class Claims:
    """The keys one member holds, and its calls to claim and release them.

    Args:
      coordinator: the store.
      name: the member's name.
      ttl: the member's lease ttl (paces retries).
      view: the member's view (placement, the founding's quiet period).
      lease: the live session's lease, or None between sessions.
      reconcile: asks the owner to plan again.
    """

    def __init__(
        self,
        coordinator: Coordinator,
        name: str,
        ttl: float,
        view: ClusterView,
        lease: Callable[[], Lease | None],
        reconcile: Callable[[], None],
    ) -> None:
        self.coordinator = coordinator
        self.name = name
        self.ttl = ttl
        self.view = view
        self.held: set[str] = set()  # keys held in the live session
        self.waiting: set[str] = set()  # ids whose claim may have lost to another holder
        self._lease = lease
        self._reconcile = reconcile
        self._releasing: dict[str, trio.Event] = {}
        self._limit = trio.CapacityLimiter(CLAIMS_AT_ONCE)
        self._nursery: trio.Nursery | None = None  # the live session's
        self._release_send: trio.MemorySendChannel[str] | None = None
        self._quiet_told = False

    def begin(self, nursery: trio.Nursery, send: trio.MemorySendChannel[str]) -> None:
        """A session starts: nothing is held yet; releases go to `send`."""
        self.held, self.waiting = set(), set()
        self._nursery, self._release_send = nursery, send
        self._quiet_told = False

    def end(self) -> None:
        """The session is over: nothing is held (its lease takes the keys along)."""
        self.held = set()
        self._nursery = self._release_send = None
        for event in self._releasing.values():
            event.set()
        self._releasing.clear()

    async def claim(self, ids: Sequence[str]) -> set[str]:
        """Claim the ownership keys of `ids`; return the ids whose keys this member holds.

        A key another member holds is not taken: once it is deleted (released, or its
        lease ended) the watch asks for a reconcile, which claims again. A key won for
        an agent that a member joining meanwhile now owns is released again at once. A
        claim the store did not answer is retried by a reconcile a moment later. While
        the cluster's founding is quiet (`ClusterView.settling`) nothing is claimed: the
        end of the quiet period asks for a reconcile. If the session ends meanwhile,
        nothing counts as claimed (such keys end with that session's lease). Cancelling
        abandons the claims; keys created anyway end with the lease.
        """
        lease = self._lease()
        if lease is None or not ids:
            return set()
        if self.view.settling:
            if not self._quiet_told:
                self._quiet_told = True
                log.warning(
                    "cluster: the cluster was just founded (a new etcd, or one that lost its "
                    "data): nothing is claimed for one ttl, until every member of a previous "
                    "store has stopped its agents"
                )
            return set()
        # Waiting first, so that a delete seen while the claim is in flight still wakes us.
        self.waiting.update(ids)
        won: set[str] = set()
        failed: list[str] = []
        held_by: collections.Counter[str] = collections.Counter()

        async def one(agent_id: str) -> None:
            released = self._releasing.get(agent_id)
            if released is not None:
                await released.wait()  # our own release of it first, or it would undo this
            try:
                async with self._limit:
                    holder = await self.coordinator.claim(agent_id, self.name, lease)
            except (Unavailable, Refused) as exc:
                failed.append(f"{agent_id}: {exc}")
                return
            if holder is None:
                won.add(agent_id)
            else:
                held_by[holder.member] += 1

        async with trio.open_nursery() as nursery:
            for agent_id in ids:
                nursery.start_soon(one, agent_id)
        if self._lease() is not lease:
            return set()
        self.held |= won
        self.waiting -= won
        # Members that joined meanwhile may have taken some: hand those on unstarted.
        moved = {i for i in won if not self.view.placed_here(i)}
        self.release(moved)
        if held_by:
            others = ", ".join(f"{n} by {m or '?'}" for m, n in held_by.most_common())
            log.info("cluster: agents still held elsewhere (%s) start here once released", others)
        if failed:
            log.warning("cluster: %d claims unanswered (%s); retrying", len(failed), failed[0])
            self._reconcile_later()
        return won - moved

    def release(self, ids: Iterable[str]) -> None:
        """Give up the keys of `ids`, whose agents have stopped. Sync, never blocks.

        The deletes go out in the background; a later claim of the same id waits for
        its delete, so the two cannot cross. A delete that fails is retried while the
        session lasts (after it, the lease takes the key along).
        """
        for agent_id in ids:
            if agent_id in self.held:
                self.held.discard(agent_id)
                if self._release_send is not None:
                    self._releasing[agent_id] = trio.Event()
                    self._release_send.send_nowait(agent_id)

    async def release_keys(self, lease: Lease, receive: trio.MemoryReceiveChannel[str]) -> None:
        """The session's background deletes, until it ends."""
        async with trio.open_nursery() as nursery:
            async for agent_id in receive:
                nursery.start_soon(self._release_one, lease, agent_id)

    async def _release_one(self, lease: Lease, agent_id: str) -> None:
        delay = 0.1
        try:
            while True:
                try:
                    async with self._limit:
                        await self.coordinator.release(agent_id, lease)
                    return
                except (Unavailable, Refused) as exc:
                    log.warning("%s: release failed (%s); retrying", agent_id, exc)
                await trio.sleep(delay)
                delay = min(delay * 2, self.ttl)
        finally:
            event = self._releasing.pop(agent_id, None)
            if event is not None:
                event.set()

    def _reconcile_later(self) -> None:
        async def later() -> None:
            await trio.sleep(min(1.0, self.ttl / 4))
            self._reconcile()

        if self._nursery is not None:
            self._nursery.start_soon(later)
