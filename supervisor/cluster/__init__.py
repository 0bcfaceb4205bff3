"""Scale-out: several supervisors share one manifest, each agent running on at most one.

- `rendezvous`: pure; which member should run which agent (highest-random-weight hashing).
- `coordinator`: the `Coordinator` seam (leases, ownership keys, watches) and
  `EtcdCoordinator`, its implementation on etcd v3's JSON gateway (`etcd`).
- `member`: one supervisor's membership: its lease kept alive, its view of the cluster,
  the claims and releases its owner task asks for, and fencing when the lease is lost.

This module holds only what the manifest needs to validate a ``cluster`` address, so
that loading a manifest does not import an HTTP client.
"""

from __future__ import annotations

import re

import attrs

CLUSTER_PATTERN = r"^etcd://[^/,\s]+(,[^/,\s]+)*(/[A-Za-z0-9_.-]+)?/?$"
MEMBER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
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
    if not re.match(CLUSTER_PATTERN, address):
        raise ValueError(
            f"cluster address {address!r}: expected etcd://HOST:PORT[,HOST:PORT...][/NAMESPACE]"
        )
    hosts, _, namespace = address[len("etcd://") :].partition("/")
    endpoints = tuple(f"http://{host}" for host in hosts.split(","))
    return ClusterAddress(endpoints, namespace.strip("/") or DEFAULT_NAMESPACE)
