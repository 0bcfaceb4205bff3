"""`supervisor.overlay`'s pure part: the desired state from (manifest, overlay), and what
the state file may hold. No trio, no files written."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor.manifest import Manifest, ManifestError, Settings
from supervisor.overlay import desired_state, storable

from ..conftest import make_spec

ENTRY = {"entry": "tests.agents.api_agents:idle"}


def manifest(tmp_path: Path, ids: list[str], defaults: dict[str, object] | None = None) -> Manifest:
    agents = {i: make_spec(i) for i in ids}
    return Manifest(
        path=tmp_path / "agents.toml", settings=Settings(), agents=agents, defaults=defaults or {}
    )


def test_the_manifest_wins_an_id_and_the_overlay_entry_is_only_reported(tmp_path: Path) -> None:
    m = manifest(tmp_path, ["a"])
    overlay = {"a": dict(ENTRY), "b": dict(ENTRY)}
    d = desired_state(m, overlay)
    assert list(d.specs) == ["a", "b"]
    assert d.sources == {"a": "manifest", "b": "api"}
    assert d.specs["a"] is m.agents["a"]
    assert d.shadowed == ("a",)
    assert set(overlay) == {"a", "b"}  # nothing changed: dropping is the owner's, once accepted


def test_api_agents_get_the_given_manifests_defaults(tmp_path: Path) -> None:
    overlay = {"b": dict(ENTRY)}
    old = desired_state(manifest(tmp_path, [], {"stop_timeout": 3.0}), overlay)
    new = desired_state(manifest(tmp_path, [], {"stop_timeout": 4.0}), overlay)
    assert old.specs["b"].stop_timeout == 3.0
    assert new.specs["b"].stop_timeout == 4.0
    again = desired_state(manifest(tmp_path, [], {"stop_timeout": 4.0}), overlay)
    assert again.specs["b"] == new.specs["b"]  # same inputs, equal specs: nothing restarts


def test_an_invalid_entry_of_our_own_overlay_refuses_the_whole(tmp_path: Path) -> None:
    m = manifest(tmp_path, ["a"])
    overlay = {"b": {**ENTRY, "after": ["gone"]}, "c": dict(ENTRY)}
    with pytest.raises(ManifestError, match="gone"):
        desired_state(m, overlay, label="state.toml")


def test_an_invalid_entry_of_a_shared_overlay_is_left_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    m = manifest(tmp_path, ["a"])
    overlay = {"a": dict(ENTRY), "b": {**ENTRY, "after": ["gone"]}, "c": dict(ENTRY)}
    d = desired_state(m, overlay, shared=True)
    assert set(d.specs) == {"a", "c"}
    assert d.shadowed == ()  # not ours to drop
    assert "b left out" in caplog.text


def test_storable_drops_top_level_nulls_and_locates_nested_ones() -> None:
    assert storable("b", {**ENTRY, "restart": None, "x-a": None}) == ENTRY
    with pytest.raises(ManifestError) as caught:
        storable("b", {**ENTRY, "x-meta": {"owner": None, "tags": ["t", None]}})
    assert caught.value.errors == [
        "request: agents.b.x-meta.owner: must not be null (TOML has no null; leave the key out)",
        "request: agents.b.x-meta.tags[1]: must not be null (TOML has no null; leave the key out)",
    ]


def test_storable_refuses_what_toml_cannot_hold() -> None:
    with pytest.raises(ManifestError, match="cannot be kept in the state file"):
        storable("b", {**ENTRY, "x-set": {1, 2}})
