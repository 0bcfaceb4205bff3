"""One supervisor's membership in a cluster: its lease, its view, its claims.

A member joins with a lease of `ttl` seconds, registers its name under it, reads the
whole cluster state and then follows it with a watch (`ClusterView`). From the live
members it knows which agents are its own (rendezvous hashing); the supervisor's owner
task plans over those, and asks this object to `claim` an agent's ownership key before
starting it and to `release` it after it stopped. The owner stays the only task that
changes slots: this one only asks it to reconcile when something it plans over changed
(members, the shared overlay, or a key it waits for was freed).

At most once rests on one rule: an agent starts only while this member holds its key on
a lease that provably lives, by the member's own clock (`Lifeline`), checked right
before every start (`may_start`). When refreshes fail for long enough that less than
half the ttl may be left, or the store turns out to have lost its data (its epoch
changed, or its revision went back), the session ends: nothing starts any more, and the
supervisor is told to stop every agent before the lease can have expired (`fence`).
The member then joins again with a new lease and claims anew.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import trio

from supervisor.cluster import Compacted, Joining, Refused, Unavailable
from supervisor.cluster.claims import Claims
from supervisor.cluster.coordinator import (
    Change,
    Coordinator,
    EtcdCoordinator,
    Holder,
    Lease,
    Snapshot,
)
from supervisor.cluster.lease import KeepAlive, Lifeline, keep_alive_in_thread
from supervisor.cluster.rendezvous import Placement
from supervisor.cluster.view import ClusterView
from supervisor.logs import log
from supervisor.manifest import AgentSpec

LEAVE_WITHIN = 1.0  # seconds a leaving member spends revoking its lease

Fence = Callable[[float], Awaitable[None]]


class ClusterMember:
    """This supervisor as a member of the cluster. Create it, hand it to the `Supervisor`,
    and run `run()` next to the supervisor's owner task.

    Args:
      coordinator: the store the members coordinate through.
      name: this member's name, unique in the cluster.
      ttl: the lease's time to live, in seconds (`lease_ttl`).
      keep_alive_with: makes a coordinator of its own for a keep-alive thread (then the
        lease's deadlines are on ``time.monotonic``); None keeps the lease alive in this
        loop, on trio's clock (what tests of the timeline use).
    """

    @classmethod
    def connect(cls, joining: Joining) -> ClusterMember:
        """A member of the etcd cluster `joining` names (nothing is sent yet)."""
        # A call must fail well within the lease's life, so a slow etcd is noticed in time.
        timeout = min(5.0, max(0.5, joining.lease_ttl / 4))
        address = joining.address

        def coordinator() -> EtcdCoordinator:
            return EtcdCoordinator(
                address.endpoints, address.namespace, timeout=timeout, access=joining.access
            )

        return cls(coordinator(), joining.member, joining.lease_ttl, keep_alive_with=coordinator)

    def __init__(
        self,
        coordinator: Coordinator,
        name: str,
        ttl: float,
        *,
        keep_alive_with: Callable[[], Coordinator] | None = None,
    ) -> None:
        self.coordinator = coordinator
        self.name = name
        self.ttl = ttl
        self.lease: Lease | None = None  # the live session's; None between sessions
        self.view = ClusterView(name)
        self.lifeline = Lifeline(trio.current_time if keep_alive_with is None else time.monotonic)
        self.claims = Claims(
            coordinator, name, ttl, self.view, lambda: self.lease, lambda: self._reconcile()
        )
        self.sessions = 0
        self._keep_alive_with = keep_alive_with
        self._epoch: str | None = None  # the live session's (or the last one's)
        self._reset: str | None = None  # an epoch found stale: delete it before joining
        self._ended: tuple[float, str] | None = None  # how the live session ended
        self._stale: list[Lease] = []  # leases of lost sessions, revoked once etcd answers
        self._reconcile: Callable[[], None] = lambda: None
        self._nursery: trio.Nursery | None = None  # the live session's

    # -- the owner's side: sync reads, and the claims and releases around slots ---------

    @property
    def members(self) -> dict[str, dict[str, Any]]:
        return self.view.members

    @property
    def owners(self) -> dict[str, Holder]:
        return self.view.owners

    @property
    def overlay(self) -> dict[str, dict[str, Any]]:
        return self.view.overlay

    @property
    def placement(self) -> Placement:
        return self.view.placement

    @property
    def held(self) -> set[str]:
        """The keys this member holds in the live session."""
        return self.claims.held

    def assignment(self, after: Mapping[str, Sequence[str]]) -> dict[str, str | None]:
        """{id: member that should run it} (see `ClusterView.assignment`)."""
        return self.view.assignment(after)

    def mine(self, desired: Mapping[str, AgentSpec]) -> dict[str, AgentSpec]:
        """The agents of `desired` this member should run: none while it has no lease."""
        return {} if self.lease is None else self.view.placed(desired)

    def may_start(self, agent_id: str) -> str | None:
        """None if `agent_id` may start now, else why not: this member holds its key, and
        its lease provably lives by its own clock at this very moment. Sync and cheap: ask
        it right before the start, with no await in between."""
        if self.lease is None or not self.lifeline.live():
            return "this member's cluster lease is not provably live"
        if agent_id not in self.claims.held:
            return "this member does not hold the agent's cluster key"
        return None

    def holds(self, agent_id: str) -> bool:
        """Whether this member may start `agent_id` now (`may_start` says yes)."""
        return self.may_start(agent_id) is None

    async def claim(self, ids: Sequence[str]) -> set[str]:
        """Claim the ownership keys of `ids`; return the ids whose keys this member holds
        (see `Claims.claim`)."""
        return await self.claims.claim(ids)

    def release(self, ids: Iterable[str]) -> None:
        """Give up the keys of `ids`, whose agents have stopped (see `Claims.release`)."""
        self.claims.release(ids)

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
        must stop every agent by `deadline` (trio time); it is awaited when the session
        ends, before joining again. Started at once: while the store is unreachable the
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
        """Join with a new lease and follow the cluster until the session ends.

        Returns the trio time by which every agent must have stopped.

        Raises:
          Unavailable, Refused: could not join; nothing of the attempt is left running.
        """
        await self._revoke_stale()
        if self._reset is not None:
            await self.coordinator.reset_epoch(self._reset)
            self._reset = None
        sent = self.lifeline.clock()
        lease = await self.coordinator.grant(self.ttl)
        try:
            epoch = await self.coordinator.found(lease.ttl)
            replaced = await self.coordinator.register(self.name, lease)
            snapshot = await self.coordinator.snapshot()
            self._check_store(epoch, snapshot)
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
        self._ended = None
        try:
            async with trio.open_nursery() as nursery:
                self._begin(lease, sent, snapshot, nursery, send)
                nursery.start_soon(self._follow, snapshot.revision)
                nursery.start_soon(self.claims.release_keys, lease, receive)
                nursery.start_soon(self._keep_alive, lease, sent)
        finally:
            self._end(lease)
        assert self._ended is not None
        return self._ended[0]

    def _check_store(self, epoch: str, snapshot: Snapshot) -> None:
        """Before joining: the store must be the one this member knew, or a new one.

        Raises:
          Refused: it lost its data meanwhile (its epoch changed since `found`), or it
            went back in time under the same epoch (restored from an old backup): then
            the epoch is reset before the next attempt, and the cluster founds a new one.
        """
        if snapshot.epoch != epoch:
            raise Refused("the cluster's epoch changed while joining")
        if epoch == self._epoch and snapshot.revision < self.view.revision:
            self._reset = epoch
            raise Refused(
                f"the store went back from revision {self.view.revision} to "
                f"{snapshot.revision}: it lost data; founding the cluster anew"
            )
        if self._epoch not in (None, epoch):
            log.error(
                "cluster: the store lost its data (a new epoch); it claims nothing until "
                "its quiet period of one ttl has passed"
            )
        self._epoch = epoch

    def _begin(
        self,
        lease: Lease,
        sent: float,
        snapshot: Snapshot,
        nursery: trio.Nursery,
        send: trio.MemorySendChannel[str],
    ) -> None:
        self.lease, self._nursery = lease, nursery
        self.lifeline.refreshed(sent, lease.ttl)
        self.claims.begin(nursery, send)
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
        self.lifeline.cut()
        if self.lease is lease:
            self.lease = None
            self._stale.append(lease)
        self._nursery = None
        self.claims.end()

    async def _keep_alive(self, lease: Lease, sent: float) -> None:
        if self._keep_alive_with is None:
            ended = await KeepAlive(self.coordinator.keepalive, lease, sent, self.lifeline).run()
        else:
            ended = await keep_alive_in_thread(self._keep_alive_with, lease, sent, self.lifeline)
        self._stop(*ended)

    def _stop(self, deadline: float, why: str) -> None:
        """End the live session: stop every agent by `deadline` (the lifeline's clock)."""
        self.lifeline.cut()
        if self._ended is not None or self._nursery is None:
            return
        log.error("cluster: %s: stopping every agent here, then joining again", why)
        now = self.lifeline.clock()
        self._ended = (trio.current_time() + (deadline - now), why)
        self._nursery.cancel_scope.cancel()

    async def _follow(self, revision: int) -> None:
        """Keep the view current from `revision` on; after a broken watch, read it all
        again (what changed meanwhile is then in the new snapshot)."""
        delay = 0.1
        while True:
            try:
                async with self.coordinator.watch(revision) as batches:
                    delay = 0.1
                    async for batch in batches:
                        self._apply(batch.revision, batch.changes)
                        revision = batch.revision
            except (Unavailable, Refused, Compacted) as exc:
                log.debug("cluster: watch ended (%s)", exc)
            await trio.sleep(delay)
            delay = min(delay * 2, self.ttl / 2)
            try:
                snapshot = await self.coordinator.snapshot()
            except (Unavailable, Refused):
                continue
            if snapshot.revision < self.view.revision and snapshot.epoch == self._epoch:
                self._reset = self._epoch
                why = f"its revision went back from {self.view.revision} to {snapshot.revision}"
                self._stop(self.lifeline.clock(), f"the store lost data ({why})")
                return
            self._load(snapshot)
            revision = snapshot.revision

    def _load(self, snapshot: Snapshot) -> None:
        self.view.load(snapshot)
        if self._same_store():
            self._reconcile()

    def _apply(self, revision: int, changes: Iterable[Change]) -> None:
        """Fold watched changes into the view; ask for a reconcile if they matter here."""
        wake = self.view.apply(changes, self.claims.waiting)
        self.view.revision = max(self.view.revision, revision)
        if self._same_store() and wake:
            self._reconcile()

    def _same_store(self) -> bool:
        """Whether the store still has this session's epoch; if not, end the session now:
        it lost its data, so others may claim our agents once its quiet period is over."""
        if self.view.epoch == self._epoch:
            return True
        self._stop(self.lifeline.clock(), "the store lost its data (its epoch changed)")
        return False

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
