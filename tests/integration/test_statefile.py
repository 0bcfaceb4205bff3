"""The state file on a real, small, full disk (a 64 KiB tmpfs), and its misconfigurations.

Nothing acknowledged is lost: a write is complete or does not happen (the old file stays),
the change is refused and logged, and loading keeps every valid entry.
"""

from __future__ import annotations

import errno
import os
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from supervisor import manifest as mf
from supervisor import statefile
from supervisor.manifest import ManifestError
from supervisor.overlay import read_entries

from .test_api import AGENTS, IDLE, open_api


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs mounted on a fresh folder; unmounted afterwards."""
    folder = tmp_path / "small"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path, leave: int = 0) -> Path:
    """Fill `folder`'s file system, leaving about `leave` bytes; return the filler."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        while os.write(fd, b"\0" * 4096) > 0:
            pass
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
    finally:
        os.close(fd)
    if leave:
        os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler


def agents(n: int, size: int = 100) -> dict[str, dict[str, object]]:
    return {f"a{i}": {"command": ["sleep", "x" * size]} for i in range(n)}


def test_a_write_that_does_not_fit_keeps_the_old_file_whole(tmpfs: Path) -> None:
    path = tmpfs / "state.toml"
    statefile.write(path, agents(2))
    before = path.read_bytes()
    fill(tmpfs, leave=4096)  # room for one page: os.write writes part, then fails
    with pytest.raises(OSError, match="No space left"):
        statefile.write(path, agents(100))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmpfs.iterdir()) == ["filler", "state.toml"]  # no temp left


async def test_on_a_full_disk_loads_and_unloads_are_refused_and_nothing_is_lost(
    tmpfs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmpfs / "state.toml"
    toml = f'[supervisor]\nstate_file = "{state}"\n{IDLE}'
    with trio.fail_after(20):
        async with open_api(tmpfs.parent, toml) as api:
            body = {"id": "b", "entry": f"{AGENTS}:idle"}
            assert (await api.http.post("/agents", json=body)).status_code == 201
            before = state.read_bytes()
            fill(tmpfs)
            r = await api.http.post("/agents", json={"id": "c", "entry": f"{AGENTS}:idle"})
            assert r.status_code == 422
            assert "cannot write the state file" in r.json()["error"]
            assert "c" not in api.sup.slots
            r = await api.http.delete("/agents/b")
            assert r.status_code == 422
            assert api.sup.slots["b"].state == "running"  # the agent stays, as the file says
            assert state.read_bytes() == before
            assert caplog.text.count("cannot write the state file") >= 2
    assert set(tomllib.loads(before.decode())["agents"]) == {"b"}


async def test_a_null_under_an_x_key_is_refused_not_a_crash(tmp_path: Path) -> None:
    toml = f'[supervisor]\nstate_file = "state.toml"\n{IDLE}'
    with trio.fail_after(20):
        async with open_api(tmp_path, toml) as api:
            body = {"id": "b", "entry": f"{AGENTS}:idle", "x-meta": {"owner": None}}
            r = await api.http.post("/agents", json=body)
            assert r.status_code == 422
            assert r.json()["errors"] == [
                "request: agents.b.x-meta.owner: must not be null (TOML has no null; "
                "leave the key out)"
            ]
            # A key given as null at the top is "not given", and is stored without it.
            body = {"id": "c", "entry": f"{AGENTS}:idle", "x-note": None, "restart": None}
            assert (await api.http.post("/agents", json=body)).status_code == 201
            assert (await api.http.get("/healthz")).status_code == 200
    saved = tomllib.loads((tmp_path / "state.toml").read_text())["agents"]
    assert saved == {"c": {"entry": f"{AGENTS}:idle"}}


@pytest.mark.parametrize("which", ["the manifest", "an included file", "a folder"])
def test_check_refuses_a_state_file_it_would_overwrite(tmp_path: Path, which: str) -> None:
    (tmp_path / "more.toml").write_text("")
    (tmp_path / "state.d").mkdir()
    target = {"the manifest": "agents.toml", "an included file": "more.toml", "a folder": "state.d"}
    path = tmp_path / "agents.toml"
    path.write_text(
        f'[supervisor]\nstate_file = "{target[which]}"\ninclude = ["more.toml"]\n{IDLE}'
    )
    with pytest.raises(ManifestError, match=r"supervisor\.state_file") as caught:
        mf.load(path)
    assert len(caught.value.errors) == 1
    result = subprocess.run(
        [".venv/bin/python", "-m", "supervisor", "check", str(path)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[2],
    )
    assert result.returncode == 2
    assert "supervisor.state_file" in result.stderr + result.stdout
    assert (tmp_path / "state.d").is_dir()  # nothing moved


def test_loading_keeps_the_valid_entries_and_sets_aside_only_the_invalid(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "gone"
    path = tmp_path / "agents.toml"
    path.write_text(f'[supervisor]\nstate_file = "state.toml"\n{IDLE}')
    m = mf.load(path)
    state = tmp_path / "state.toml"
    entries = {
        "good": {"entry": f"{AGENTS}:idle", "after": ["a"]},
        "stale": {"path": str(folder)},  # its folder is gone
        "orphan": {"entry": f"{AGENTS}:idle", "after": ["removed"]},
        "chained": {"entry": f"{AGENTS}:idle", "after": ["orphan"]},
        "a": {"entry": f"{AGENTS}:idle"},  # the manifest declares it now: it wins
    }
    statefile.write(state, entries)
    kept = read_entries(state, m)
    assert set(kept) == {"good"}
    assert set(statefile.read(state)) == {"good"}
    [aside] = tmp_path.glob("state.toml.rejected-*")
    assert set(statefile.read(aside)) == {"stale", "orphan", "chained"}
    for agent_id in ("stale", "orphan", "chained"):
        assert f"agent {agent_id} is invalid" in caplog.text
