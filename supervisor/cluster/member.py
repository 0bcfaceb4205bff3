"""One supervisor's membership in a cluster: its lease, its view, its claims.

A member joins with a lease of `ttl` seconds, registers its name under it, reads the
whole cluster state and then follows it with a watch. From the live members it knows
which agents are its own (rendezvous hashing); the supervisor's owner task plans over
those, and asks this object to `claim` an agent's ownership key before starting it and
to `release` it after it stopped. The owner stays the only task that changes slots:
this one only asks it to reconcile when something it plans over changed (members, the
shared overlay, or a key it waits for was freed).

At most once rests on one rule: an agent runs only while this member holds its key on
a live lease. So when refreshes of the lease fail for long enough that less than half
its ttl may be left, the lease counts as lost: `held` empties at once (nothing new
starts), and the supervisor is told to stop every agent before the lease can have
expired (`fence`). The member then joins again with a new lease and claims anew.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import trio

from supervisor.cluster import Compacted, Joining, Refused, Unavailable
from supervisor.cluster.coordinator import (
    Change,
    Coordinator,
    EtcdCoordinator,
    Holder,
    Lease,
    Snapshot,
)
from supervisor.cluster.rendezvous import Placement, placement_keys
from supervisor.logs import log
from supervisor.manifest import AgentSpec

CLAIMS_AT_ONCE = 32  # concurrent calls to the store for claims and releases
LEAVE_WITHIN = 1.0  # seconds a leaving member spends revoking its lease

Fence = Callable[[float], Awaitable[None]]


class ClusterMember:
    """This supervisor as a member of the cluster. Create it, hand it to the `Supervisor`,
    and run `run()` next to the supervisor's owner task.

    Args:
      coordinator: the store the members coordinate through.
      name: this member's name, unique in the cluster.
      ttl: the lease's time to live, in seconds (`lease_ttl`).
    """

    @classmethod
    def connect(cls, joining: Joining) -> ClusterMember:
        """A member of the etcd cluster `joining` names (nothing is sent yet)."""
        # A call must fail well within the lease's life, so a slow etcd is noticed in time.
        timeout = min(5.0, max(0.5, joining.lease_ttl / 4))
        address = joining.address
        coordinator = EtcdCoordinator(address.endpoints, address.namespace, timeout=timeout)
        return cls(coordinator, joining.member, joining.lease_ttl)

    def __init__(self, coordinator: Coordinator, name: str, ttl: float) -> None:
        self.coordinator = coordinator
        self.name = name
        self.ttl = ttl
        self.lease: Lease | None = None  # the live session's; None between sessions
        self.members: dict[str, dict[str, Any]] = {}
        self.owners: dict[str, Holder] = {}  # agent id -> who holds its key
        self.overlay: dict[str, dict[str, Any]] = {}  # the shared API overlay
        self.placement = Placement(())
        self.held: set[str] = set()  # keys this member holds in the live session
        self.sessions = 0
        self._waiting: set[str] = set()  # ids whose claim may have lost to another holder
        self._keys: dict[str, str] = {}  # placement key of each id, as `mine` last saw them
        self._releasing: dict[str, trio.Event] = {}
        self._stale: list[Lease] = []  # leases of lost sessions, revoked once etcd answers
        self._limit = trio.CapacityLimiter(CLAIMS_AT_ONCE)
        self._reconcile: Callable[[], None] = lambda: None
        self._nursery: trio.Nursery | None = None  # the live session's
        self._release_send: trio.MemorySendChannel[str] | None = None

    # -- the owner's side: sync reads, and the claims and releases around slots ---------

    def assignment(self, after: Mapping[str, Sequence[str]]) -> dict[str, str | None]:
        """{id: member that should run it} for the agents `after` maps to their `after`.

        Agents linked by `after` go to one member, placed by their group's least id.
        """
        keys = placement_keys(after)
        return {agent_id: self.placement.owner(key) for agent_id, key in keys.items()}

    def mine(self, desired: Mapping[str, AgentSpec]) -> dict[str, AgentSpec]:
        """The agents of `desired` this member should run: none while it has no lease."""
        if self.lease is None:
            return {}
        self._keys = placement_keys({i: spec.after for i, spec in desired.items()})
        owner = self.placement.owner
        return {i: spec for i, spec in desired.items() if owner(self._keys[i]) == self.name}

    def holds(self, agent_id: str) -> bool:
        """Whether this member may run `agent_id` now: it holds its key on a live lease."""
        return self.lease is not None and agent_id in self.held

    async def claim(self, ids: Sequence[str]) -> set[str]:
        """Claim the ownership keys of `ids`; return the ids whose keys this member holds.

        A key another member holds is not taken: once it is deleted (released, or its
        lease ended) the watch asks for a reconcile, which claims again. A key won for
        an agent that a member joining meanwhile now owns is released again at once. A
        claim the store did not answer is retried by a reconcile a moment later. If the
        session ends meanwhile, nothing counts as claimed (such keys end with that
        session's lease). Cancelling abandons the claims; keys created anyway end with
        the lease.
        """
        lease = self.lease
        if lease is None or not ids:
            return set()
        # Waiting first, so that a delete seen while the claim is in flight still wakes us.
        self._waiting.update(ids)
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
        if self.lease is not lease:
            return set()
        self.held |= won
        self._waiting -= won
        # Members that joined meanwhile may have taken some: hand those on unstarted.
        moved = {i for i in won if self.placement.owner(self._keys.get(i, i)) != self.name}
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

    # -- the member task ----------------------------------------------------------------

    async def run(
        self,
        reconcile: Callable[[], None],
        fence: Fence,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Be a member until cancelled: join, keep the lease, follow the cluster.

        `reconcile()` asks the owner to plan again (sync, coalesced). `fence(deadline)`
        must stop every agent by `deadline` (trio time); it is awaited when the lease is
        lost, before joining again. Started at once: while the store is unreachable the
        supervisor runs (and answers its API) with no agents, and this keeps trying.

        Cancellation leaves the cluster: the lease is revoked (shielded, within
        `LEAVE_WITHIN` seconds) so that the others take over at once instead of after
        the ttl; then the coordinator is closed. The caller must have stopped every
        agent before cancelling.
        """
        self._reconcile = reconcile
        task_status.started()
        delay = 0.1
        try:
            while True:
                try:
                    deadline = await self._session()
                except (Unavailable, Refused) as exc:
                    log.warning("cluster: cannot join (%s); retrying in %.1fs", exc, delay)
                    await trio.sleep(delay)
                    delay = min(delay * 2, self.ttl)
                    continue
                delay = 0.1
                await fence(deadline)
        finally:
            with trio.CancelScope(shield=True):
                with trio.move_on_after(LEAVE_WITHIN):
                    await self._leave()
                await self.coordinator.aclose()

    async def _session(self) -> float:
        """Join with a new lease and follow the cluster until the lease is lost.

        Returns the trio time by which every agent must have stopped.

        Raises:
          Unavailable, Refused: could not join; nothing of the attempt is left running.
        """
        await self._revoke_stale()
        sent = trio.current_time()
        lease = await self.coordinator.grant(self.ttl)
        try:
            replaced = await self.coordinator.register(self.name, lease)
            snapshot = await self.coordinator.snapshot()
        except BaseException:
            self._stale.append(lease)
            raise
        if replaced is not None and replaced.lease not in (0, lease.id):
            log.warning(
                "cluster: the name %r was registered by another lease (a previous run, or a "
                "second member with this name: names must be unique)",
                self.name,
            )
        send, receive = trio.open_memory_channel[str](math.inf)
        try:
            async with trio.open_nursery() as nursery:
                self._begin(lease, snapshot, nursery, send)
                nursery.start_soon(self._follow, snapshot.revision)
                nursery.start_soon(self._release_keys, lease, receive)
                deadline = await self._keep_alive(lease, sent)
                nursery.cancel_scope.cancel()
        finally:
            self._end(lease)
        return deadline

    def _begin(
        self,
        lease: Lease,
        snapshot: Snapshot,
        nursery: trio.Nursery,
        send: trio.MemorySendChannel[str],
    ) -> None:
        self.lease, self._nursery, self._release_send = lease, nursery, send
        self.held, self._waiting = set(), set()
        self.sessions += 1
        self._load(snapshot)
        log.info(
            "cluster: %s joined (lease %x, ttl %gs); members: %s",
            self.name,
            lease.id,
            lease.ttl,
            ", ".join(sorted(self.members)),
        )

    def _end(self, lease: Lease) -> None:
        """The session is over (sync): from now on nothing is ours and nothing starts."""
        if self.lease is lease:
            self.lease = None
            self.held = set()
            self._stale.append(lease)
        self._nursery = self._release_send = None
        for event in self._releasing.values():
            event.set()
        self._releasing.clear()

    async def _keep_alive(self, lease: Lease, sent: float) -> float:
        """Refresh `lease` every ttl/6 until it is lost; return when to have stopped by.

        etcd counts a refresh from when it gets it, after we sent it, so `sent + ttl` is
        a time the lease lives to at least. Failed refreshes are retried; once less than
        half the ttl may be left, the lease counts as lost, and the rest of that half,
        minus a margin for killing, is the agents' time to stop. Refreshing at ttl/6
        (etcd's own clients use ttl/3) gives a slow answer (a busy loop, a busy etcd) a
        third of the ttl, and a failed one several retries, before that point.
        """
        expires = sent + lease.ttl
        margin = lease.ttl / 10
        interval, retry = lease.ttl / 6, lease.ttl / 20
        due = sent + interval
        failing = ""
        while True:
            await trio.sleep_until(due)
            give_up = expires - lease.ttl / 2
            sent = trio.current_time()
            ttl: float | None = None
            if sent < give_up:
                with trio.move_on_at(give_up):
                    try:
                        ttl = await self.coordinator.keepalive(lease)
                    except (Unavailable, Refused) as exc:
                        failing = failing or str(exc)
            if ttl is not None and ttl > 0:
                if failing:
                    log.info("cluster: lease refreshed again")
                expires, due, failing = sent + ttl, sent + interval, ""
            elif ttl == 0:
                self._lose(lease, "the lease expired (this member was out of touch too long)")
                return trio.current_time()  # others may run our agents already: stop now
            elif trio.current_time() >= give_up:
                why = failing or "no answer"
                self._lose(lease, f"cannot refresh the lease ({why})")
                return expires - margin
            else:
                if not failing:
                    failing = "no answer"
                    log.warning("cluster: lease refresh failed; retrying")
                due = sent + retry

    def _lose(self, lease: Lease, why: str) -> None:
        log.error("cluster: %s: stopping every agent here, then joining again", why)
        self._end(lease)

    async def _follow(self, revision: int) -> None:
        """Keep the view current from `revision` on; after a broken watch, read it all
        again (what changed meanwhile is then in the new snapshot)."""
        delay = 0.1
        while True:
            try:
                async with self.coordinator.watch(revision) as batches:
                    delay = 0.1
                    async for batch in batches:
                        self._apply(batch.changes)
                        revision = batch.revision
            except (Unavailable, Refused, Compacted) as exc:
                log.debug("cluster: watch ended (%s)", exc)
            await trio.sleep(delay)
            delay = min(delay * 2, self.ttl / 2)
            try:
                snapshot = await self.coordinator.snapshot()
            except (Unavailable, Refused):
                continue
            self._load(snapshot)
            revision = snapshot.revision

    def _load(self, snapshot: Snapshot) -> None:
        self.members = dict(snapshot.members)
        self.owners = dict(snapshot.owners)
        self.overlay = dict(snapshot.overlay)
        self.placement = Placement(self.members)
        self._reconcile()

    def _apply(self, changes: Iterable[Change]) -> None:
        """Fold watched changes into the view; ask for a reconcile if they matter here."""
        wake = members_changed = False
        for change in changes:
            table: dict[str, Any] = getattr(self, change.section)
            if change.value is None:
                existed = table.pop(change.id, None) is not None
            else:
                existed = change.id in table
                table[change.id] = change.value
            if change.section == "members":
                members_changed |= change.value is None or not existed
            elif change.section == "overlay":
                wake = True
            elif change.value is None and change.id in self._waiting:
                wake = True  # a key we wait for was freed
        if members_changed:
            self.placement = Placement(self.members)
            log.info("cluster: members now %s", ", ".join(sorted(self.members)) or "none")
        if wake or members_changed:
            self._reconcile()

    async def _release_keys(self, lease: Lease, receive: trio.MemoryReceiveChannel[str]) -> None:
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

    async def _revoke_stale(self) -> None:
        """Revoke the leases of lost sessions: their keys go at once, not after the ttl."""
        while self._stale:
            await self.coordinator.revoke(self._stale[0])
            self._stale.pop(0)

    async def _leave(self) -> None:
        lease = self.lease
        if lease is not None:
            self._end(lease)
        try:
            await self._revoke_stale()
            log.info("cluster: %s left", self.name)
        except (Unavailable, Refused) as exc:
            log.warning("cluster: could not revoke the lease (%s); it expires by itself", exc)
