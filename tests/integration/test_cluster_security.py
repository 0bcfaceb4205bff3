"""etcd secured: TLS with client certificates, and user/password auth with an RBAC role
on the cluster's prefix, against a real etcd started so (certificates made with openssl).
"""

from __future__ import annotations

import base64
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import tomli_w
import trio

from supervisor.cluster import Access, Refused, Unavailable, access, joining
from supervisor.cluster.coordinator import EtcdCoordinator
from supervisor.manifest import Settings, load

from ..etcd_harness import OPENSSL, Certs, EtcdServer, make_certs, needs_etcd
from ..harness import SupervisorProcess, lines, wait_until

pytestmark = [
    needs_etcd,
    pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed (.ci/run installs it)"),
]

ROOT_PASSWORD = "root-secret"
PASSWORD = "member-secret"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def enable_auth(etcd: EtcdServer) -> None:
    """Users root and "member"; member's role may read and write /secure/ only."""
    with httpx.Client(base_url=etcd.url, verify=etcd.context() or True, timeout=10) as http:

        def post(path: str, body: dict[str, object]) -> None:
            answer = http.post(f"/v3/auth/{path}", json=body)
            assert answer.status_code == 200, answer.text

        post("user/add", {"name": "root", "password": ROOT_PASSWORD})
        post("role/add", {"name": "root"})
        post("user/grant", {"user": "root", "role": "root"})
        post("user/add", {"name": "member", "password": PASSWORD})
        post("role/add", {"name": "supervisor"})
        post(
            "role/grant",
            {
                "name": "supervisor",
                "perm": {
                    "permType": "READWRITE",
                    "key": _b64("/secure/"),
                    "range_end": _b64("/secure0"),
                },
            },
        )
        post("user/grant", {"user": "member", "role": "supervisor"})
        post("enable", {})


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory, certs: Certs) -> Iterator[EtcdServer]:
    with EtcdServer(tmp_path_factory.mktemp("etcd-tls") / "data", tls=certs) as server:
        enable_auth(server)
        yield server


def settings(tmp_path: Path, certs: Certs, **keys: str) -> Settings:
    (tmp_path / "password").write_text(PASSWORD + "\n")
    table = {
        "cluster": "etcd://127.0.0.1:1/secure",
        "etcd_ca": str(certs.ca),
        "etcd_cert": str(certs.client_cert),
        "etcd_key": str(certs.client_key),
        "etcd_user": "member",
        "etcd_password_file": "password",
        **keys,
    }
    (tmp_path / "agents.toml").write_text(tomli_w.dumps({"supervisor": table}))
    return load(tmp_path / "agents.toml").settings


def coordinator(etcd: EtcdServer, how: Access, namespace: str = "secure") -> EtcdCoordinator:
    scheme = "https" if how.tls is not None else "http"
    return EtcdCoordinator([f"{scheme}://{etcd.address}"], namespace, timeout=2.0, access=how)


async def test_a_member_with_the_ca_its_certificate_and_its_password_works(
    etcd: EtcdServer, certs: Certs, tmp_path: Path
) -> None:
    c = coordinator(etcd, access(settings(tmp_path, certs)))
    try:
        lease = await c.grant(10)
        assert await c.found(2) != ""
        assert await c.claim("web", "m1", lease) is None
        snapshot = await c.snapshot()
        assert "web" in snapshot.owners
        async with c.watch(snapshot.revision) as batches:  # the watch, over TLS with the token
            await c.release("web", lease)
            with trio.fail_after(10):
                batch = await anext(batches)
        assert [(x.section, x.id, x.value) for x in batch.changes] == [("owners", "web", None)]
    finally:
        await c.aclose()


async def test_a_new_token_is_asked_for_after_etcd_restarts(
    etcd: EtcdServer, certs: Certs, tmp_path: Path
) -> None:
    c = coordinator(etcd, access(settings(tmp_path, certs)))
    try:
        lease = await c.grant(30)
        etcd.stop()  # simple tokens live in etcd's memory: they are gone after a restart
        etcd.start()
        assert await c.keepalive(lease) > 0
    finally:
        await c.aclose()


# A handshake etcd refuses leaves httpx's request body generator unfinished; its
# warning when collected is httpx's, not the member's.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize(
    ("keys", "error", "message"),
    [
        ({"etcd_cert": "", "etcd_key": ""}, Unavailable, "etcd unreachable"),  # no client cert
        ({"etcd_ca": "OTHER"}, Unavailable, "CERTIFICATE_VERIFY_FAILED"),  # not etcd's CA
        ({"etcd_password_file": "wrong"}, Refused, "authentication failed"),
    ],
)
async def test_without_the_right_credentials_nothing_is_read_or_written(
    etcd: EtcdServer,
    certs: Certs,
    tmp_path: Path,
    keys: dict[str, str],
    error: type[Exception],
    message: str,
) -> None:
    """Issue 14, case 5: etcd was an open door (the client had no TLS and no auth, so
    anyone who could reach etcd could write the overlay and run a command on a member).
    A client without etcd's CA, without a client certificate or with a wrong password
    now gets nothing in."""
    (tmp_path / "wrong").write_text("guess\n")
    keys = {k: (str(certs.other_ca) if v == "OTHER" else v) for k, v in keys.items()}
    c = coordinator(etcd, access(settings(tmp_path, certs, **keys)))
    try:
        with pytest.raises(error, match=message):
            await c.grant(10)
    finally:
        await c.aclose()


async def test_the_role_keeps_a_member_to_its_prefix(
    etcd: EtcdServer, certs: Certs, tmp_path: Path
) -> None:
    """Issue 14, case 5: the RBAC role documented in docs/cluster.md keeps a member's
    etcd user to its cluster's prefix: writing another cluster's overlay is refused."""
    c = coordinator(etcd, access(settings(tmp_path, certs)), namespace="other")
    try:
        with pytest.raises(Refused, match="permission denied"):
            await c.put_overlay("x", {"command": ["true"]})
    finally:
        await c.aclose()


def test_access_keys_go_in_pairs_and_their_files_must_be_readable(
    tmp_path: Path, certs: Certs
) -> None:
    with pytest.raises(ValueError, match="etcd_cert and etcd_key go together"):
        access(settings(tmp_path, certs, etcd_key=""))
    with pytest.raises(ValueError, match="etcd_user and etcd_password_file go together"):
        access(settings(tmp_path, certs, etcd_user=""))
    with pytest.raises(ValueError, match="cannot read etcd_password_file"):
        access(settings(tmp_path, certs, etcd_password_file="missing"))
    with pytest.raises(ValueError, match="cannot use the etcd TLS files"):
        access(settings(tmp_path, certs, etcd_ca="agents.toml"))
    # Relative paths in the manifest are from its folder; on the command line, from here.
    join = joining(settings(tmp_path, certs), None, "m1")
    assert join is not None
    assert join.address.endpoints == ("https://127.0.0.1:1",)
    assert "secret" not in repr(join)


@pytest.mark.slow
def test_supervisor_run_joins_a_secured_etcd_with_flags_and_exits_2_on_bad_ones(
    etcd: EtcdServer, certs: Certs, tmp_path: Path
) -> None:
    (tmp_path / "password").write_text(PASSWORD + "\n")
    starts = tmp_path / "web.starts"
    doc = {
        "supervisor": {"lease_ttl": 2, "etcd_user": "member", "etcd_password_file": "password"},
        "agents": {"web": {"command": ["sh", "-c", f"echo $$ >> {starts}; exec sleep 1000"]}},
    }
    manifest = tmp_path / "agents.toml"
    manifest.write_text(tomli_w.dumps(doc))
    flags = ["--cluster", f"etcd://{etcd.address}/secure", "--member", "m1"]
    tls = ["--etcd-ca", str(certs.ca), "--etcd-cert", str(certs.client_cert)]
    bad = subprocess.run(
        [sys.executable, "-m", "supervisor", "run", str(manifest), "--api", "", *flags, *tls],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert bad.returncode == 2, bad.stderr
    assert "etcd_cert and etcd_key go together" in bad.stderr
    with SupervisorProcess(manifest, *flags, *tls, "--etcd-key", str(certs.client_key)) as sup:
        wait_until(lambda: lines(starts), 20, "web started through the secured etcd")
        assert "cannot join" not in sup.output()
