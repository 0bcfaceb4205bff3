"""Scale-out: several supervisors share one manifest, each agent running on at most one.

- `rendezvous`: pure; which member should run which agent (highest-random-weight hashing).
- `coordinator`: the `Coordinator` seam (leases, ownership keys, watches) and
  `EtcdCoordinator`, its implementation on etcd v3's JSON gateway (`etcd`).
- `member`: one supervisor's membership: its lease kept alive, its view of the cluster,
  the claims and releases its owner task asks for, and fencing when the lease is lost.

This module itself is light (no HTTP client): it parses a ``cluster`` address and
names the errors of the coordination store.
"""

from __future__ import annotations

import re
import socket

import attrs

from supervisor.manifest import CLUSTER_PATTERN, MEMBER_PATTERN, Settings

DEFAULT_NAMESPACE = "supervisor"


class Unavailable(Exception):
    """The coordination store did not answer in time (down, unreachable, or too slow)."""


class Refused(Exception):
    """The coordination store answered with an error."""


class Compacted(Exception):
    """A watch asked for history the store no longer keeps: take a new snapshot."""


@attrs.frozen
class ClusterAddress:
    """Where the cluster's etcd is, and the key namespace this cluster uses in it."""

    endpoints: tuple[str, ...]  # "http://host:port"
    namespace: str


def parse_cluster_address(address: str) -> ClusterAddress:
    """Parse ``etcd://HOST:PORT[,HOST:PORT...][/NAMESPACE]``.

    The namespace (default ``supervisor``) lets several clusters share one etcd.

    Raises:
      ValueError: `address` is not of that form.
    """
    if not address or not re.match(CLUSTER_PATTERN, address):
        raise ValueError(
            f"cluster address {address!r}: expected etcd://HOST:PORT[,HOST:PORT...][/NAMESPACE]"
        )
    hosts, _, namespace = address[len("etcd://") :].partition("/")
    endpoints = tuple(f"http://{host}" for host in hosts.split(","))
    return ClusterAddress(endpoints, namespace.strip("/") or DEFAULT_NAMESPACE)


@attrs.frozen
class Joining:
    """How this supervisor joins its cluster: where, under which name, with which ttl."""

    address: ClusterAddress
    member: str
    lease_ttl: float


def joining(settings: Settings, cluster: str | None, member: str | None) -> Joining | None:
    """The cluster to join, from `[supervisor]` and the ``--cluster`` / ``--member``
    overrides (None: not given); None when running alone.

    Raises:
      ValueError: the address or the member name is invalid (the message says which).
    """
    address = settings.cluster if cluster is None else cluster
    if not address:
        return None
    name = (settings.member if member is None else member) or socket.gethostname()
    if not re.match(MEMBER_PATTERN, name):
        raise ValueError(
            f"member name {name!r}: use 1 to 253 letters, digits, '_', '.' or '-', "
            "starting with a letter or a digit"
        )
    return Joining(parse_cluster_address(address), name, settings.lease_ttl)
