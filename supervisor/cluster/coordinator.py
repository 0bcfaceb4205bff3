"""The `Coordinator` seam: what a cluster member asks of the store it coordinates through.

A member needs a lease it keeps alive (its liveness), a registration attached to it,
ownership keys it creates only when absent and attaches to its lease (its right to run
an agent), the shared overlay of agents loaded over the API, and a watch on all of it.
`EtcdCoordinator` provides these on etcd v3; a Kubernetes backend (Lease objects and
their watch) would provide the same. Nothing above this seam knows which store it is.

Layout of one cluster's keys under its namespace NS in etcd::

    /NS/members/<member>   {"member", "pid", "host", "since"}   attached to the member's lease
    /NS/owners/<agent id>  {"member"}                           attached to the owner's lease
    /NS/overlay/<agent id> the agent's table, as loaded over the API   (no lease: it persists)
    /NS/epoch              {"epoch"}: written once, when the cluster is founded   (no lease)
    /NS/settling           {"epoch"}: the founding's quiet period, on a lease of one ttl

When a lease ends (revoked, or expired because its member stopped refreshing it), etcd
deletes every key attached to it at once: the member leaves and its agents are free.

The epoch tells a store that lost its data from one whose keys were released: a store
without an epoch is new, or was wiped (etcd restarted on an empty data folder, or
restored from an old backup), and members that ran agents on the old one may still be
running them until their own refreshes fail. So whoever founds an epoch also writes
`settling` on a lease of its own, never refreshed, and nobody claims anything until etcd
has ended it: one ttl after the founding, every member of the old store has stopped.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, aclosing, asynccontextmanager
from typing import Any, Literal, Protocol

import attrs

from supervisor.cluster import Access, Compacted, Refused, Unavailable
from supervisor.cluster.etcd import EtcdClient
from supervisor.cluster.gateway import Event, KeyValue

__all__ = ["Compacted", "Coordinator", "EtcdCoordinator", "Refused", "Unavailable"]

Section = Literal["members", "owners", "overlay", "epoch", "settling"]
SECTIONS: tuple[Section, ...] = ("members", "owners", "overlay")
SINGLE: tuple[Section, ...] = ("epoch", "settling")  # one key each, its id ""


@attrs.frozen
class Lease:
    """A lease granted by the store: `id`, and its `ttl` in seconds."""

    id: int
    ttl: float


@attrs.frozen
class Holder:
    """Who holds an agent's ownership key: the member's name, and the lease it is on."""

    member: str
    lease: int


@attrs.frozen
class Snapshot:
    """The whole cluster state at `revision`."""

    revision: int
    members: dict[str, dict[str, Any]]  # name -> what it registered
    owners: dict[str, Holder]  # agent id -> who holds its key
    overlay: dict[str, dict[str, Any]]  # agent id -> its table
    epoch: str | None = None  # None: the store has no epoch (new, or it lost its data)
    settling: bool = False  # the founding's quiet period is on: nobody claims


@attrs.frozen
class Change:
    """One key of `section` set (`value`) or deleted (`value is None`).

    `value` is the member's registration, a `Holder`, an overlay table, the epoch (a
    string; section "epoch", id "") or True (section "settling", id "").
    """

    section: Section
    id: str
    value: Any


@attrs.frozen
class Batch:
    """Changes that happened at `revision`, in order."""

    revision: int
    changes: tuple[Change, ...]


class Coordinator(Protocol):
    """What a member needs from the coordination store.

    Every call is bounded in time by the implementation; callers needing a tighter bound
    use a cancel scope. Every async method may raise `Unavailable` (the store did not
    answer in time) or `Refused` (it answered with an error); nothing else, short of a bug.
    """

    async def grant(self, ttl: float) -> Lease:
        """A new lease of about `ttl` seconds (the store may round it up)."""

    async def keepalive(self, lease: Lease) -> float:
        """Refresh `lease`; return its new ttl, or 0 if it is gone (expired or revoked)."""

    async def revoke(self, lease: Lease) -> None:
        """End `lease` now, deleting every key attached to it. A lease already gone is fine."""

    async def found(self, ttl: float) -> str:
        """The cluster's epoch; if the store has none, found one, with a quiet period of
        `ttl` seconds (the `settling` key) during which nobody claims."""

    async def reset_epoch(self, epoch: str) -> None:
        """Delete the epoch if it is still `epoch`: the cluster founds a new one, quietly."""

    async def register(self, member: str, lease: Lease) -> Holder | None:
        """Register `member` under `lease`; return the registration it replaced, if any."""

    async def claim(self, agent_id: str, member: str, lease: Lease) -> Holder | None:
        """Create `agent_id`'s ownership key for `member` on `lease` if absent.

        Returns None when `member` holds it now on `lease` (created now, or before),
        else the holder that keeps it.
        """

    async def release(self, agent_id: str, lease: Lease) -> None:
        """Delete `agent_id`'s ownership key if `lease` holds it."""

    async def snapshot(self) -> Snapshot:
        """Read the whole cluster state."""

    def watch(self, revision: int) -> AbstractAsyncContextManager[AsyncIterator[Batch]]:
        """Every change after `revision`, as it happens. The stream has no end.

        Raises (entering or iterating) `Unavailable` when the stream breaks, and
        `Compacted` when `revision` is too old: take a new snapshot then.
        """

    async def put_overlay(self, agent_id: str, table: dict[str, Any]) -> bool:
        """Store `table` as `agent_id`'s overlay entry unless one exists; return whether stored."""

    async def delete_overlay(self, agent_id: str) -> bool:
        """Delete `agent_id`'s overlay entry; return whether it existed."""

    async def aclose(self) -> None:
        """Release the connections."""


class EtcdCoordinator:
    """The `Coordinator` on etcd v3, through its JSON gateway.

    Args:
      endpoints: etcd client URLs ("http://host:port", "https://host:port" with TLS).
      namespace: the prefix of this cluster's keys (several clusters can share an etcd).
      timeout: the deadline of one call, in seconds.
      access: TLS and authentication.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        namespace: str,
        *,
        timeout: float = 5.0,
        access: Access | None = None,
    ) -> None:
        access = access or Access()
        self.etcd = EtcdClient(
            endpoints,
            timeout=timeout,
            tls=access.tls,
            user=access.user,
            password=access.password,
        )
        self.prefix = f"/{namespace.strip('/')}/"

    def key(self, section: Section, name: str = "") -> str:
        return f"{self.prefix}{section}/{name}" if name else f"{self.prefix}{section}"

    async def grant(self, ttl: float) -> Lease:
        # etcd counts whole seconds: round up, never down, so the lease is not shorter
        # than asked for; etcd may round up further to its minimum.
        lease, granted = await self.etcd.grant(max(1, int(-(-ttl // 1))))
        return Lease(lease, float(granted))

    async def keepalive(self, lease: Lease) -> float:
        return float(await self.etcd.keepalive(lease.id))

    async def revoke(self, lease: Lease) -> None:
        await self.etcd.revoke(lease.id)

    async def found(self, ttl: float) -> str:
        current = await self.etcd.get(self.key("epoch"))
        if current is not None:
            return _epoch(current.value)
        quiet, _ = await self.etcd.grant(max(1, math.ceil(ttl)))  # never refreshed
        epoch = _json({"epoch": uuid.uuid4().hex})
        created, kv = await self.etcd.create(
            self.key("epoch"), epoch, also=[(self.key("settling"), epoch, quiet)]
        )
        if created:
            return _epoch(epoch)
        await self.etcd.revoke(quiet)  # founded by another member meanwhile
        return _epoch(kv.value if kv is not None else b"")

    async def reset_epoch(self, epoch: str) -> None:
        await self.etcd.delete_if_value(self.key("epoch"), _json({"epoch": epoch}))

    async def register(self, member: str, lease: Lease) -> Holder | None:
        info = {"member": member, "pid": os.getpid(), "host": socket.gethostname()}
        info["since"] = round(time.time(), 3)
        prev = await self.etcd.put(self.key("members", member), _json(info), lease.id)
        return None if prev is None else Holder(member, prev.lease)

    async def claim(self, agent_id: str, member: str, lease: Lease) -> Holder | None:
        created, kv = await self.etcd.create(
            self.key("owners", agent_id), _json({"member": member}), lease.id
        )
        if created:
            return None
        if kv is None:  # cannot happen: the compare and the read are one atomic transaction
            return Holder("", 0)
        holder = _holder(kv)
        return None if holder == Holder(member, lease.id) else holder

    async def release(self, agent_id: str, lease: Lease) -> None:
        await self.etcd.delete_if_lease(self.key("owners", agent_id), lease.id)

    async def snapshot(self) -> Snapshot:
        kvs, revision = await self.etcd.range_prefix(self.prefix)
        state: dict[Section, dict[str, Any]] = {section: {} for section in SECTIONS + SINGLE}
        for kv in kvs:
            change = self._change(kv, deleted=False)
            if change is not None:
                state[change.section][change.id] = change.value
        members, owners, overlay = state["members"], state["owners"], state["overlay"]
        epoch, settling = state["epoch"].get(""), "" in state["settling"]
        return Snapshot(revision, members, owners, overlay, epoch, settling)

    @asynccontextmanager
    async def watch(self, revision: int) -> AsyncIterator[AsyncIterator[Batch]]:
        async with (
            self.etcd.watch(self.prefix, revision + 1) as events,
            aclosing(self._batches(events)) as batches,
        ):
            yield batches

    async def put_overlay(self, agent_id: str, table: dict[str, Any]) -> bool:
        created, _ = await self.etcd.create(self.key("overlay", agent_id), _json(table))
        return created

    async def delete_overlay(self, agent_id: str) -> bool:
        return await self.etcd.delete(self.key("overlay", agent_id))

    async def aclose(self) -> None:
        await self.etcd.aclose()

    async def _batches(self, events: AsyncIterator[list[Event]]) -> AsyncGenerator[Batch, None]:
        async for batch in events:
            changes = [self._change(e.kv, deleted=e.type == "delete") for e in batch]
            kept = tuple(c for c in changes if c is not None)
            if kept:
                yield Batch(max(e.kv.mod_revision for e in batch), kept)

    def _change(self, kv: KeyValue, *, deleted: bool) -> Change | None:
        """The change `kv` stands for; None for keys this member does not understand."""
        section, _, name = kv.key[len(self.prefix) :].partition("/")
        if section in SINGLE and not name:
            single = None if deleted else (_epoch(kv.value) if section == "epoch" else True)
            return Change(section, "", single)
        if section not in SECTIONS or not name:
            return None
        if deleted:
            return Change(section, name, None)
        try:
            value = json.loads(kv.value)
        except ValueError:
            return None  # written by someone else; not ours to interpret
        if section == "owners":
            value = _holder(kv)
        return Change(section, name, value)


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def _holder(kv: KeyValue) -> Holder:
    try:
        member = str(json.loads(kv.value).get("member", ""))
    except (ValueError, AttributeError):
        member = ""
    return Holder(member, kv.lease)


def _epoch(value: bytes) -> str:
    """The epoch a key holds; an unreadable one is an epoch too (a different one)."""
    try:
        return str(json.loads(value)["epoch"])
    except (ValueError, KeyError, TypeError):
        return "?" + value.hex()
