"""An agent's spec, built from its layers: `[defaults]`, a folder's keys, its own table.

`Agents` gathers the agents of a manifest file by file (the manifest's `[agents.*]`,
then each included file's), reporting ids declared twice, then checks `after` across
all of them: each id it names is known, and there is no cycle. `build_agent` builds
one spec, as `load` and the HTTP API both need.
"""

from __future__ import annotations

import graphlib
import json
import os
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs

from supervisor.manifest.check import (
    Problems,
    agent_where,
    check_id,
    file_tables,
    kinds_message,
    parse_toml,
    read_layer,
)
from supervisor.manifest.convert import did_you_mean, show
from supervisor.manifest.files import read_text
from supervisor.manifest.folder import read_folder
from supervisor.manifest.keys import IncludedDocument
from supervisor.manifest.model import KIND_KEYS, AgentSpec, Kind, ManifestError


def read_defaults(
    table: dict[str, Any], label: str, base: Path, problems: Problems
) -> dict[str, Any]:
    """The validated keys of a `[defaults]` table; the kind keys have no place there."""
    values = (
        read_layer(table, label=label, where=lambda: "defaults", base=base, problems=problems) or {}
    )
    for key in KIND_KEYS:
        if values.pop(key, None) is not None:
            problems.add(
                label, f"defaults.{key}", "not allowed in [defaults]: each agent says what it runs"
            )
    return values


@attrs.frozen
class Built:
    """What a load built, for the next load of the same manifest to reuse (`Agents`).

    `written` holds each agent's table as written, as its `repr` (equal reprs are equal
    TOML values; agents of equal tables share one string), and only for agents that are
    not folder agents; `specs` is the load's specs, the manifest's own dict.
    """

    defaults: dict[str, Any]
    written: dict[str, str]
    specs: Mapping[str, AgentSpec]


@attrs.define
class Agents:
    """The agents of one manifest, gathered file by file, then checked together.

    `reuse` is what the previous load of the same manifest built: an agent whose table
    and `[defaults]` are equal to those gets the previous spec object back instead of
    being structured and checked again (a spec is a pure function of them; folder agents
    excepted, whose files may change behind an equal table). A reload of a 10,000-agent
    file that changes a few then costs little more than parsing it, and the plan
    compares unchanged specs by identity. Within one load, an agent whose table is equal
    to an earlier one's that had no problem gets that agent's values (its own `params`
    and `env` dicts: agents never share one), not a second structuring: a fleet of
    agents written alike costs one check. `built()` is what this load hands on.
    """

    base: Path
    shown_base: str  # the manifest's folder as the user wrote it, for messages
    defaults: dict[str, Any]
    problems: Problems
    reuse: Built | None = None
    specs: dict[str, AgentSpec] = attrs.Factory(dict)
    declared: dict[str, str] = attrs.Factory(dict)  # every id seen -> its file's label
    written: dict[str, str] = attrs.Factory(dict)
    # This load's tables without a problem, by repr: (that repr, merged values, root).
    _alike: dict[str, tuple[str, dict[str, Any], Path]] = attrs.Factory(dict)

    def built(self) -> Built:
        return Built(self.defaults, self.written, self.specs)

    def add_table(self, agents: dict[str, Any], label: str) -> None:
        """Add the agents of one file's `[agents]` table; `label` names the file."""
        reuse = self.reuse
        if reuse is not None and reuse.defaults != self.defaults:
            reuse = None
        for agent_id, table in agents.items():
            if agent_id.startswith("x-"):
                continue
            if agent_id in self.declared:
                message = f"already declared in {self.declared[agent_id]}"
                self.problems.add(label, agent_where(agent_id), message)
                continue
            self.declared[agent_id] = label
            check_id(agent_id, label, self.problems)
            written = repr(table)
            alike = self._alike.get(written)
            if alike is not None:
                written = alike[0]  # one string for all of them
            if reuse is not None and reuse.written.get(agent_id) == written:
                spec: AgentSpec | None = reuse.specs[agent_id]
            elif alike is not None:
                spec = _spec(agent_id, _own_copy(alike[1]), root=alike[2], digest="")
            else:
                spec = self._build(agent_id, table, label, written)
            if spec is not None:
                self.specs[agent_id] = spec
                if spec.path is None:
                    self.written[agent_id] = written

    def _build(self, agent_id: str, table: Any, label: str, written: str) -> AgentSpec | None:
        """The first agent of its table in this load: structured and checked."""
        before = len(self.problems.messages)
        layers = agent_layers(
            agent_id,
            table,
            label=label,
            base=self.base,
            shown_base=self.shown_base,
            defaults=self.defaults,
            problems=self.problems,
        )
        if layers is None:
            return None
        values, root, digest = layers
        spec = _spec(agent_id, values, root=root, digest=digest)
        if spec.path is None and len(self.problems.messages) == before:
            self._alike[written] = (written, values, root)
        return spec

    def add_file(self, path: Path, label: str) -> None:
        """Add the agents of an included file, which may hold nothing else."""
        try:
            doc = parse_toml(read_text(path, label), label)
        except ManifestError as e:
            self.problems.messages.extend(e.errors)
            return
        for name in ("supervisor", "defaults"):
            if doc.pop(name, None) is not None:
                self.problems.add(
                    label, name, "not allowed in an included file, which holds [agents.*] only"
                )
        self.add_table(file_tables(IncludedDocument, doc, label, self.problems).agents, label)

    def check_after(self) -> None:
        """Once every file is in: `after` names declared agents, without cycles."""
        specs = self.specs.values()
        check_after_ids(specs, self.declared.keys(), self.declared.__getitem__, self.problems)
        for cycle in _cycles(self.specs):
            where = f"{agent_where(cycle[0])}.after"
            self.problems.add(self.declared[cycle[0]], where, "cycle: " + " -> ".join(cycle))


def build_agent(
    agent_id: str,
    table: Any,
    *,
    label: str,
    base: Path,
    shown_base: str,
    defaults: dict[str, Any],
    problems: Problems,
) -> AgentSpec | None:
    """Build one agent from its table over `defaults`; None if it has problems (reported).

    Precedence, lowest first: built-in defaults, `[defaults]`, a folder's agent.toml,
    the agent's own table.
    """
    layers = agent_layers(
        agent_id,
        table,
        label=label,
        base=base,
        shown_base=shown_base,
        defaults=defaults,
        problems=problems,
    )
    if layers is None:
        return None
    values, root, digest = layers
    return _spec(agent_id, values, root=root, digest=digest)


def agent_layers(
    agent_id: str,
    table: Any,
    *,
    label: str,
    base: Path,
    shown_base: str,
    defaults: dict[str, Any],
    problems: Problems,
) -> tuple[dict[str, Any], Path, str] | None:
    """What `build_agent` builds a spec of: the merged values, the root and the digest."""
    given = (
        [key for key in KIND_KEYS if table.get(key) is not None] if isinstance(table, dict) else []
    )
    if len(given) != 1 and isinstance(table, dict):
        message = kinds_message(given, KIND_KEYS) + _dotted_id_hint(agent_id, table)
        problems.add(label, agent_where(agent_id), message)
    # The agent's TOML path is built only if a problem is reported there.
    own = read_layer(
        table, label=label, where=lambda: agent_where(agent_id), base=base, problems=problems
    )
    if own is None or len(given) != 1:
        return None
    if "path" not in own:
        return _merge(defaults, own), base, ""
    shown = os.path.normpath(os.path.join(shown_base, own["path"]))
    where = agent_where(agent_id)
    folder = read_folder(own["path"], shown, where=where, label=label, base=base, problems=problems)
    if folder is None:
        return None
    values = _merge(_merge(defaults, folder.values), own)
    values["path"] = folder.path
    return values, folder.path, folder.digest


def _dotted_id_hint(agent_id: str, table: dict[str, Any]) -> str:
    """A hint for ``[agents.api.v2]``, which TOML reads as agent "api" with a table "v2"."""
    for key, value in table.items():
        if isinstance(value, dict) and any(kind in value for kind in KIND_KEYS):
            dotted = json.dumps(f"{agent_id}.{key}")
            return f"; for the id {dotted}, quote it: [agents.{dotted}]"
    return ""


def _merge(lower: dict[str, Any], upper: dict[str, Any]) -> dict[str, Any]:
    """`upper`'s keys over `lower`'s; `params` and `env` merge their own keys too.

    The result is a fresh dict, and so are the `params` and `env` it takes from `lower`:
    agents must not share a mutable params (`[defaults]` is every agent's lower layer).
    """
    merged = {**lower, **upper}
    for key in ("params", "env"):
        if key in lower:
            merged[key] = {**lower[key], **upper.get(key, {})}
    return merged


def _own_copy(values: dict[str, Any]) -> dict[str, Any]:
    """`values` for another agent: a fresh dict, with its own `params` and `env`."""
    copy = {**values}
    for key in ("params", "env"):
        if key in copy:
            copy[key] = {**copy[key]}
    return copy


def _spec(agent_id: str, values: dict[str, Any], *, root: Path, digest: str) -> AgentSpec:
    """The spec of an agent whose `values` are merged; `values` is the caller's to give."""
    kind: Kind = "in-process" if "entry" in values else "process"
    values.setdefault("cwd", root)
    return AgentSpec(id=agent_id, kind=kind, root=root, digest=digest, **values)


# --- after: checked across agents ----------------------------------------------------


def check_after_ids(
    specs: Iterable[AgentSpec],
    known: Collection[str],
    label_of: Callable[[str], str],
    problems: Problems,
) -> None:
    """Each id an agent's `after` names must be another agent's."""
    for spec in specs:
        for other in spec.after:
            if other == spec.id:
                message = "an agent cannot come after itself"
            elif other not in known:
                message = f"unknown agent {show(other)}{did_you_mean(other, known)}"
            else:
                continue
            problems.add(label_of(spec.id), f"{agent_where(spec.id)}.after", message)


def _cycles(specs: Mapping[str, AgentSpec]) -> Iterator[list[str]]:
    """Each cycle in `after`, as ids from its first agent (in file order) back to it.

    Cycles that share an agent are found one at a time: fixing one reveals the next.
    """
    # Only agents with an `after` can be on a cycle: most of a large manifest has none,
    # and leaving them out keeps this O(agents with after).
    graph = {
        spec.id: [other for other in spec.after if other in specs and other != spec.id]
        for spec in specs.values()
        if spec.after
    }
    order: dict[str, int] = {}
    while True:
        try:
            graphlib.TopologicalSorter(graph).prepare()
            return
        except graphlib.CycleError as e:
            # graphlib lists each node before the ones that come after it; we name
            # the agents the other way round, along `after`.
            found: list[str] = list(reversed(e.args[1]))[:-1]
        order = order or {agent_id: i for i, agent_id in enumerate(specs)}
        start = min(range(len(found)), key=lambda i: order[found[i]])
        cycle = found[start:] + found[:start]
        yield [*cycle, cycle[0]]
        graph = {
            node: [o for o in deps if o not in cycle]
            for node, deps in graph.items()
            if node not in cycle
        }
