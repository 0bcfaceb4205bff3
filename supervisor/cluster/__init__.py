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
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

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

    endpoints: tuple[str, ...]  # "http://host:port", or "https://host:port" with TLS
    namespace: str


def parse_cluster_address(address: str, *, tls: bool = False) -> ClusterAddress:
    """Parse ``etcd://HOST:PORT[,HOST:PORT...][/NAMESPACE]``.

    The namespace (default ``supervisor``) lets several clusters share one etcd; with
    `tls` the endpoints are reached over https.

    Raises:
      ValueError: `address` is not of that form.
    """
    if not address or not re.match(CLUSTER_PATTERN, address):
        raise ValueError(
            f"cluster address {address!r}: expected etcd://HOST:PORT[,HOST:PORT...][/NAMESPACE]"
        )
    hosts, _, namespace = address[len("etcd://") :].partition("/")
    scheme = "https" if tls else "http"
    endpoints = tuple(f"{scheme}://{host}" for host in hosts.split(","))
    return ClusterAddress(endpoints, namespace.strip("/") or DEFAULT_NAMESPACE)


@attrs.frozen
class Access:
    """How a member proves itself to etcd, and checks it talks to the right one.

    `tls` (None: plain http) verifies etcd's certificate against `etcd_ca` and presents
    the client certificate `etcd_cert` / `etcd_key`; `user` / `password` are etcd's
    authentication (docs/cluster.md, "Securing etcd").
    """

    tls: ssl.SSLContext | None = attrs.field(default=None, eq=False)
    user: str = ""
    password: str = attrs.field(default="", repr=False)


# The [supervisor] keys of `Access`, which the command line can also give (--etcd-ca ...).
ACCESS_KEYS = ("etcd_ca", "etcd_cert", "etcd_key", "etcd_user", "etcd_password_file")


def access(settings: Settings, overrides: Mapping[str, str] | None = None) -> Access:
    """The `Access` that `[supervisor]` and command-line `overrides` (paths relative to
    the working folder; keys of `ACCESS_KEYS`) describe: files are read now.

    Raises:
      ValueError: a key without its partner, or a file that cannot be read or used.
    """
    given: dict[str, Any] = {key: getattr(settings, key) for key in ACCESS_KEYS}
    for key, value in (overrides or {}).items():
        given[key] = value if key == "etcd_user" else (Path(value).absolute() if value else None)
    ca, cert, key = given["etcd_ca"], given["etcd_cert"], given["etcd_key"]
    if (cert is None) != (key is None):
        raise ValueError("etcd_cert and etcd_key go together: give both, or neither")
    tls = None
    if ca is not None or cert is not None:
        try:
            tls = ssl.create_default_context(cafile=None if ca is None else str(ca))
            if cert is not None:
                tls.load_cert_chain(str(cert), str(key))
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"cannot use the etcd TLS files: {exc}") from None
    user, password_file = given["etcd_user"], given["etcd_password_file"]
    if bool(user) != (password_file is not None):
        raise ValueError("etcd_user and etcd_password_file go together: give both, or neither")
    password = ""
    if password_file is not None:
        try:
            password = Path(password_file).read_text().strip()
        except OSError as exc:
            raise ValueError(f"cannot read etcd_password_file {password_file}: {exc.strerror}")
        if not password:
            raise ValueError(f"etcd_password_file {password_file} is empty")
    return Access(tls, user, password)


@attrs.frozen
class Joining:
    """How this supervisor joins its cluster: where, under which name, with which ttl."""

    address: ClusterAddress
    member: str
    lease_ttl: float
    access: Access = Access()


def joining(
    settings: Settings,
    cluster: str | None,
    member: str | None,
    overrides: Mapping[str, str] | None = None,
) -> Joining | None:
    """The cluster to join, from `[supervisor]` and the ``--cluster`` / ``--member``
    overrides (None: not given) and those of `access` (`overrides`); None when running
    alone.

    Raises:
      ValueError: the address, the member name or the access is invalid (the message
        says which).
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
    how = access(settings, overrides)
    where = parse_cluster_address(address, tls=how.tls is not None)
    return Joining(where, name, settings.lease_ttl, how)
