"""A small etcd v3 client over its JSON gateway (``/v3/...``), with httpx on trio.

etcd serves its gRPC API as JSON over HTTP too (the grpc-gateway): unary calls are a
POST each, and streams (watch) answer one JSON object per line. That is all the
coordination needs (leases, transactions, ranges, watches), so no gRPC client is
needed. Keys and values travel base64-encoded; 64-bit numbers travel as strings.

Every call has a deadline and tries the endpoints in turn: a connection error or a
timeout on one moves on to the next. Calls that can be repeated safely are repeated
as is; the only one that is not naturally idempotent, the create transaction, reads the
key back when it loses, so a retried create that had in fact succeeded reports the key
as held by the caller's lease (see `EtcdClient.create`).

The wire format (base64 keys, errors, `KeyValue`) is `gateway.py`'s; the watch's
never-ending answer is read by `watchstream.py`.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import h11
import httpx
import trio

from supervisor.cluster.gateway import (
    UNAUTHENTICATED,
    EtcdError,
    EtcdUnavailable,
    Event,
    KeyValue,
    b64,
    decode,
    key_value,
    prefix_end,
    revision_of,
    why,
)
from supervisor.cluster.watchstream import open_watch

__all__ = ["EtcdClient", "EtcdError", "EtcdUnavailable", "Event", "KeyValue", "prefix_end"]


class EtcdClient:
    """Calls to one etcd cluster through any of its `endpoints` ("http://host:port", or
    "https://host:port" with `tls`).

    Args:
      endpoints: client URLs of the etcd members; calls try them in turn.
      timeout: how long one endpoint gets to answer a call, in seconds.
      tls: verifies etcd's certificate (and presents ours, if it holds one).
      user, password: etcd's authentication: a token is asked for before the first
        call, and again when etcd says it is no longer valid (it restarted, or the token
        expired).
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        timeout: float = 5.0,
        tls: ssl.SSLContext | None = None,
        user: str = "",
        password: str = "",
    ) -> None:
        if not endpoints:
            raise ValueError("no etcd endpoints")
        self.endpoints = tuple(e.rstrip("/") for e in endpoints)
        self.timeout = timeout
        self.tls = tls
        self.user, self._password = user, password
        self._token: str | None = None
        self._current = 0  # the endpoint that answered last; tried first
        self._http = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=128, max_keepalive_connections=64),
            verify=tls if tls is not None else True,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def call(self, path: str, body: dict[str, Any]) -> Any:
        """POST `body` to ``/v3/<path>`` and return the decoded answer.

        Each endpoint gets `timeout` seconds; callers that need a tighter bound wrap the
        call in a cancel scope (a cancelled call may or may not have taken effect).

        Raises:
          EtcdUnavailable: no endpoint answered in time.
          EtcdError: etcd refused the request (wrong credentials, no permission...).
        """
        if self.user and self._token is None:
            await self._authenticate()
        try:
            return await self._post(path, body, self._headers())
        except EtcdError as exc:
            if not self.user or exc.code != UNAUTHENTICATED:
                raise
        await self._authenticate()  # the token went stale: once more with a new one
        return await self._post(path, body, self._headers())

    async def _authenticate(self) -> None:
        self._token = None
        answer = await self._post(
            "auth/authenticate", {"name": self.user, "password": self._password}, {}
        )
        self._token = str(answer.get("token", ""))

    def _headers(self) -> dict[str, str]:
        return {"Authorization": self._token} if self._token else {}

    async def _post(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> Any:
        problems: list[str] = []
        for attempt in range(len(self.endpoints)):
            index = (self._current + attempt) % len(self.endpoints)
            url = f"{self.endpoints[index]}/v3/{path}"
            try:
                answer = await self._http.post(
                    url, json=body, headers=headers, timeout=self.timeout
                )
            except httpx.TransportError as exc:  # refused, reset, timed out, TLS refused
                problems.append(f"{self.endpoints[index]}: {why(exc)}")
                continue
            self._current = index
            return decode(answer)
        raise EtcdUnavailable("etcd unreachable: " + "; ".join(problems))

    # -- leases -----------------------------------------------------------------------

    async def grant(self, ttl: int) -> tuple[int, int]:
        """Grant a lease of `ttl` seconds; return (lease id, granted ttl)."""
        answer = await self.call("lease/grant", {"TTL": ttl})
        return int(answer["ID"]), int(answer["TTL"])

    async def keepalive(self, lease: int) -> int:
        """Refresh `lease`; return its new ttl in seconds, or 0 if it no longer exists.

        The gateway serves the keepalive stream one request per POST, which is all a
        periodic refresh needs.
        """
        answer = await self.call("lease/keepalive", {"ID": str(lease)})
        return int(answer.get("result", {}).get("TTL", 0))

    async def revoke(self, lease: int) -> None:
        """Revoke `lease`, deleting every key attached to it. A lease already gone is fine."""
        try:
            await self.call("lease/revoke", {"ID": str(lease)})
        except EtcdError as exc:
            if "not found" not in str(exc):
                raise

    # -- keys -------------------------------------------------------------------------

    async def range_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        """Every key under `prefix`, and the revision they were read at."""
        body = {"key": b64(prefix), "range_end": b64(prefix_end(prefix))}
        answer = await self.call("kv/range", body)
        return [key_value(kv) for kv in answer.get("kvs", [])], revision_of(answer)

    async def get(self, key: str) -> KeyValue | None:
        answer = await self.call("kv/range", {"key": b64(key)})
        kvs = answer.get("kvs", [])
        return key_value(kvs[0]) if kvs else None

    async def put(self, key: str, value: bytes, lease: int = 0) -> KeyValue | None:
        """Set `key`; return what it held before, if anything."""
        body = {"key": b64(key), "value": b64(value), "lease": str(lease), "prev_kv": True}
        answer = await self.call("kv/put", body)
        prev = answer.get("prev_kv")
        return key_value(prev) if prev else None

    async def create(
        self,
        key: str,
        value: bytes,
        lease: int = 0,
        *,
        also: Sequence[tuple[str, bytes, int]] = (),
    ) -> tuple[bool, KeyValue | None]:
        """Create `key` only if it is absent (one compare-and-swap transaction), and with
        it the keys of `also` (key, value, lease), in the same transaction.

        Returns (created, existing): ``(True, None)`` when this call created it, else
        ``(False, kv)`` with the key as it is. A caller holding a lease should also treat
        ``kv.lease == lease`` as its own: a retry of a create that went through.
        """
        puts = [(key, value, lease), *also]
        body = {
            "compare": [{"target": "CREATE", "key": b64(key), "create_revision": "0"}],
            "success": [
                {"request_put": {"key": b64(k), "value": b64(v), "lease": str(lease_id)}}
                for k, v, lease_id in puts
            ],
            "failure": [{"request_range": {"key": b64(key)}}],
        }
        answer = await self.call("kv/txn", body)
        if answer.get("succeeded", False):
            return True, None
        kvs = answer["responses"][0]["response_range"].get("kvs", [])
        return False, (key_value(kvs[0]) if kvs else None)

    async def delete(self, key: str) -> bool:
        """Delete `key`; return whether it existed."""
        answer = await self.call("kv/deleterange", {"key": b64(key)})
        return int(answer.get("deleted", 0)) > 0

    async def delete_if_value(self, key: str, value: bytes) -> bool:
        """Delete `key` only while it holds `value`; return whether it did."""
        body = {
            "compare": [{"target": "VALUE", "key": b64(key), "value": b64(value)}],
            "success": [{"request_delete_range": {"key": b64(key)}}],
            "failure": [],
        }
        answer = await self.call("kv/txn", body)
        return bool(answer.get("succeeded", False))

    async def delete_if_lease(self, key: str, lease: int) -> bool:
        """Delete `key` only while it is attached to `lease`; return whether it was."""
        body = {
            "compare": [{"target": "LEASE", "key": b64(key), "lease": str(lease)}],
            "success": [{"request_delete_range": {"key": b64(key)}}],
            "failure": [],
        }
        answer = await self.call("kv/txn", body)
        return bool(answer.get("succeeded", False))

    # -- watch ------------------------------------------------------------------------

    @asynccontextmanager
    async def watch(
        self, prefix: str, start_revision: int
    ) -> AsyncIterator[AsyncIterator[list[Event]]]:
        """Watch every key under `prefix` from `start_revision` on.

        Yields an async iterator of event batches, in revision order, once etcd has
        confirmed the watch. The stream has no read deadline: it waits as long as
        nothing changes, so the caller bounds it (a dead connection is noticed by the
        lease keepalive, which goes the same way).

        Raises:
          EtcdUnavailable: no endpoint accepted the watch, or the stream broke.
          WatchCompacted: `start_revision` is older than etcd keeps.
          EtcdError: etcd refused or cancelled the watch.
        """
        endpoint = self.endpoints[self._current]
        if self.user and self._token is None:
            await self._authenticate()
        watch = open_watch(
            f"{endpoint}/v3/watch",
            prefix,
            start_revision,
            head_within=self.timeout,
            tls=self.tls,
            headers=self._headers(),
        )
        try:
            async with watch as batches:
                yield batches
        except EtcdError as exc:
            if exc.code == UNAUTHENTICATED:
                self._token = None  # a new one for the next watch
            raise
        except (
            OSError,
            trio.TooSlowError,
            trio.BrokenResourceError,
            h11.ProtocolError,
            StopAsyncIteration,
        ) as exc:
            # Next time, try another endpoint: this one may be the problem.
            self._current = (self._current + 1) % len(self.endpoints)
            raise EtcdUnavailable(f"etcd watch on {endpoint} broke: {exc!r}") from None
