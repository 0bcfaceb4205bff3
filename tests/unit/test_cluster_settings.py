"""The cluster's settings: `[supervisor] cluster / member / lease_ttl`, their overrides
(``--cluster``, ``--member``), their messages and their schema."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from supervisor.cluster import joining
from supervisor.manifest import ManifestError, Settings, json_schema, load


def settings(tmp_path: Path, table: str) -> Settings:
    (tmp_path / "agents.toml").write_text(f"[supervisor]\n{table}\n")
    return load(Path("agents.toml")).settings


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # messages name the manifest as given: agents.toml


def problems(tmp_path: Path, table: str) -> list[str]:
    with pytest.raises(ManifestError) as caught:
        settings(tmp_path, table)
    return caught.value.errors


def test_the_cluster_keys_load(tmp_path: Path) -> None:
    s = settings(
        tmp_path,
        'cluster = "etcd://10.0.0.1:2379,10.0.0.2:2379/shop"\nmember = "a-1"\nlease_ttl = 4',
    )
    assert (s.cluster, s.member, s.lease_ttl) == (
        "etcd://10.0.0.1:2379,10.0.0.2:2379/shop",
        "a-1",
        4.0,
    )
    assert (Settings().cluster, Settings().member, Settings().lease_ttl) == ("", "", 10.0)


def test_bad_cluster_keys_are_refused_with_their_place(tmp_path: Path) -> None:
    assert problems(tmp_path, 'cluster = "http://etcd:2379"') == [
        'agents.toml: supervisor.cluster: must be "etcd://HOST:PORT[,HOST:PORT...][/NAMESPACE]"'
        ' or "" (runs alone), not "http://etcd:2379"'
    ]
    assert problems(tmp_path, 'member = "-no"') == [
        "agents.toml: supervisor.member: must be 1 to 253 letters, digits, '_', '.' or '-', "
        'starting with a letter or a digit (or "" for the host name), not "-no"'
    ]
    assert problems(tmp_path, "lease_ttl = 0.5") == [
        "agents.toml: supervisor.lease_ttl: must be at least 1, not 0.5"
    ]


def test_joining_alone_by_default_and_flags_override(tmp_path: Path) -> None:
    s = settings(tmp_path, 'cluster = "etcd://etcd:2379"\nlease_ttl = 3')
    assert joining(Settings(), None, None) is None
    assert joining(s, "", None) is None  # --cluster "" runs alone
    join = joining(s, None, None)
    assert join is not None
    assert join.member == socket.gethostname()
    assert join.address.endpoints == ("http://etcd:2379",)
    assert join.lease_ttl == 3
    join = joining(Settings(), "etcd://127.0.0.1:1/x", "m9")
    assert join is not None
    assert (join.member, join.address.namespace) == ("m9", "x")
    with pytest.raises(ValueError, match="member name 'a b'"):
        joining(s, None, "a b")


def test_a_bad_cluster_flag_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "agents.toml"
    path.write_text("")
    ran = subprocess.run(
        [sys.executable, "-m", "supervisor", "run", str(path), "--api", "", "--cluster", "etcd:/x"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert ran.returncode == 2
    assert "cluster address 'etcd:/x': expected etcd://HOST:PORT" in ran.stderr


def test_the_schema_describes_the_cluster_keys() -> None:
    props = json_schema()["$defs"]["supervisor"]["properties"]
    assert props["lease_ttl"]["default"] == 10.0
    assert props["lease_ttl"]["minimum"] == 1
    assert props["cluster"]["pattern"].startswith("^(etcd://")
    assert "host name" in props["member"]["description"]
