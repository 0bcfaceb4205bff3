"""The API overlay: agents loaded over the API, beside the manifest's, and their state file.

Two parts:

- `desired_state(manifest, overlay)`: the desired agents, a pure function of the two
  (no state changed, nothing written). API agents are validated against *that*
  manifest (its folder and `[defaults]`), so a reload that changes `[defaults]` gives
  them the new ones, and the next reload of the same file finds nothing changed. The ids
  the manifest now declares are returned as `shadowed`, for the owner to drop once it has
  accepted the reload: a refused reload changes nothing, in memory or on disk.
- `Overlay`: the tables as sent, and the state file (`[supervisor] state_file`) that keeps
  them across restarts. Only the owner task calls its methods that change it (`add`,
  `remove`, `drop`, `load`), from its own task, one request at a time. A change is made
  on disk first (whole or not at all, `supervisor.statefile`); if that fails, nothing
  changed, and the caller is told (`StateNotSaved`: the API answers 422).

May import: `supervisor.manifest`, `supervisor.statefile`, `supervisor.logs`; no trio.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs

from supervisor import manifest as mf
from supervisor import statefile
from supervisor.logs import log
from supervisor.manifest import AgentSpec, Manifest, ManifestError, Source
from supervisor.manifest.check import null_paths


class StateNotSaved(Exception):
    """The state file could not be written: the change was refused, nothing changed."""


@attrs.frozen
class Desired:
    """What the supervisor should run: specs and where each was declared."""

    specs: dict[str, AgentSpec]
    sources: dict[str, Source]
    shadowed: tuple[str, ...] = ()  # overlay ids the manifest now declares (it wins)


def api_spec(
    m: Manifest,
    agent_id: str | None,
    table: dict[str, Any],
    known: Iterable[str],
    label: str = "request",
) -> AgentSpec:
    """An API agent's spec, validated against manifest `m` (its folder and [defaults])."""
    return mf.agent_from_table(
        agent_id,
        table,
        base=m.path.parent,
        defaults=m.defaults,
        known_ids=list(known),
        label=label,
    )


def desired_state(
    m: Manifest,
    overlay: Mapping[str, dict[str, Any]],
    *,
    label: str = "the API overlay",
    shared: bool = False,
) -> Desired:
    """The manifest's agents plus the overlay's (the manifest wins an id). Pure.

    Args:
      label: where the overlay's entries are said to be, in messages.
      shared: the overlay is shared with other supervisors (a cluster's): an entry
        invalid here is left out with a warning rather than refused, since another
        supervisor wrote it and it must not keep this one from converging.

    Raises:
      ManifestError: an entry of this supervisor's own overlay is invalid against `m`
        (e.g. its `after` names an agent `m` no longer declares): the reload is refused.
    """
    specs = dict(m.agents)
    sources: dict[str, Source] = dict.fromkeys(specs, "manifest")
    shadowed: list[str] = []
    errors: list[str] = []
    known = {**m.agents, **overlay}
    for agent_id, table in overlay.items():
        if agent_id in m.agents:
            shadowed.append(agent_id)
            continue
        try:
            specs[agent_id] = api_spec(m, agent_id, table, known, label)
            sources[agent_id] = "api"
        except ManifestError as exc:
            if not shared:
                errors.extend(exc.errors)
            else:
                log.warning("shared overlay: %s left out: %s", agent_id, "; ".join(exc.errors))
    if errors:
        raise ManifestError(errors)
    return Desired(specs, sources, () if shared else tuple(shadowed))


def storable(agent_id: str | None, table: dict[str, Any], label: str = "request") -> dict[str, Any]:
    """`table` as it will be kept (a key given as null is not given), once it is known
    that the state file can hold it.

    Raises:
      ManifestError: a null inside a value (TOML has no null), or a value TOML cannot
        hold; located like every other problem (``request: agents.ID.x-a.b: ...``).
    """
    kept = {key: value for key, value in table.items() if value is not None}
    where = f"agents.{agent_id or '?'}"
    errors = [
        f"{label}: {path}: must not be null (TOML has no null; leave the key out)"
        for key, value in kept.items()
        for path in null_paths(value, f"{where}.{key}")
    ]
    if not errors:
        try:
            statefile.encode({agent_id or "?": kept})
        except (TypeError, ValueError) as exc:
            errors.append(f"{label}: {where}: cannot be kept in the state file: {exc}")
    if errors:
        raise ManifestError(errors)
    return kept


class Overlay:
    """The agents loaded over the API (their tables, as sent), kept in `path` if set.

    Read it freely; only the owner task changes it (see the module's docstring).
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.tables: dict[str, dict[str, Any]] = {}

    def __contains__(self, agent_id: object) -> bool:
        return agent_id in self.tables

    def __iter__(self) -> Iterator[str]:
        return iter(self.tables)

    def __len__(self) -> int:
        return len(self.tables)

    @property
    def label(self) -> str:
        return str(self.path or "the API overlay")

    def add(self, agent_id: str, table: dict[str, Any]) -> None:
        """Keep `table` as `agent_id`'s. Raises StateNotSaved (then nothing changed)."""
        self._commit({**self.tables, agent_id: table})

    def remove(self, agent_id: str) -> None:
        """Forget `agent_id` (no-op if unknown). Raises StateNotSaved (nothing changed)."""
        if agent_id in self.tables:
            self._commit({i: t for i, t in self.tables.items() if i != agent_id})

    def drop(self, ids: Iterable[str]) -> None:
        """Forget `ids`, which the manifest now declares (it wins): the change stands even
        if the state file cannot be written, which is then logged."""
        ids = set(ids) & set(self.tables)
        if not ids:
            return
        for agent_id in sorted(ids):
            log.warning("%s: now declared in the manifest; the API's copy is dropped", agent_id)
        kept = {i: t for i, t in self.tables.items() if i not in ids}
        try:
            self._commit(kept)
        except StateNotSaved as exc:
            self.tables = kept
            log.error("%s; it still holds the dropped agents", exc)

    def _commit(self, tables: dict[str, dict[str, Any]]) -> None:
        """Write `tables` to the state file, then hold them. Raises StateNotSaved."""
        if self.path is not None:
            try:
                statefile.write(self.path, tables)
            except (OSError, TypeError, ValueError) as exc:
                why = getattr(exc, "strerror", None) or exc
                message = f"cannot write the state file {self.path}: {why}; nothing changed"
                log.error("%s", message)
                raise StateNotSaved(message) from None
        self.tables = tables

    def load(self, m: Manifest) -> None:
        """Read the state file back at start (see `read_entries`)."""
        if self.path is not None:
            self.tables = read_entries(self.path, m)


def read_entries(path: Path, m: Manifest) -> dict[str, dict[str, Any]]:
    """The entries of state file `path` that are valid against manifest `m`.

    A file that is not a state file is moved aside whole. Otherwise the valid entries
    are kept and only the invalid ones set aside (to ``NAME.rejected-TIME``), each with
    its reason logged: a folder that is gone, an `after` naming an agent that is no
    longer declared (also through another entry set aside). Entries whose id the
    manifest now declares are dropped: the manifest wins.
    """
    if not path.exists():
        return {}
    try:
        tables = statefile.read(path)
    except ManifestError as exc:
        statefile.set_aside(path, exc)
        return {}
    valid, rejected = _sort_entries(tables, m, str(path))
    shadowed = [i for i in tables if i in m.agents]
    if rejected:
        _set_entries_aside(path, tables, valid, rejected)
    elif shadowed:
        try:
            statefile.write(path, valid)
        except OSError as exc:
            log.warning("state file %s: could not drop %s: %s", path, shadowed, exc)
    return valid


def _sort_entries(
    tables: Mapping[str, dict[str, Any]], m: Manifest, label: str
) -> tuple[dict[str, dict[str, Any]], dict[str, list[str]]]:
    """({id: table} of the valid entries, {id: its problems} of the invalid ones).

    Checked again until nothing more is rejected: an entry `after` one set aside is
    invalid too.
    """
    candidates = {i: t for i, t in tables.items() if i not in m.agents}
    rejected: dict[str, list[str]] = {}
    while True:
        known = {*m.agents, *candidates}
        newly: dict[str, list[str]] = {}
        for agent_id, table in candidates.items():
            try:
                api_spec(m, agent_id, table, known, label)
            except ManifestError as exc:
                newly[agent_id] = exc.errors
        if not newly:
            return candidates, rejected
        rejected.update(newly)
        candidates = {i: t for i, t in candidates.items() if i not in newly}


def _set_entries_aside(
    path: Path,
    tables: Mapping[str, dict[str, Any]],
    valid: dict[str, dict[str, Any]],
    rejected: Mapping[str, list[str]],
) -> None:
    aside = statefile.aside_name(path, "rejected")
    try:
        statefile.write(aside, {i: tables[i] for i in rejected})
        statefile.write(path, valid)
    except OSError as exc:
        log.error("state file %s: could not set the invalid entries aside: %s", path, exc)
        where = "left in the file"
    else:
        where = f"moved to {aside}"
    for agent_id, errors in rejected.items():
        log.error(
            "state file %s: agent %s is invalid, %s:\n%s", path, agent_id, where, "\n".join(errors)
        )
