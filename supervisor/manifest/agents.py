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


# What an agent's spec was built from: its table as written, and the `[defaults]` values.
Built = tuple[Any, dict[str, Any], AgentSpec]


@attrs.define
class Agents:
    """The agents of one manifest, gathered file by file, then checked together.

    `reuse` holds what the previous load of the same manifest built, by id: an agent
    whose table and `[defaults]` are equal to those gets the previous spec object back
    instead of being structured and checked again (a spec is a pure function of them;
    folder agents excepted, whose files may change behind an equal table). A reload of a
    10,000-agent file that changes a few then costs little more than parsing it, and the
    plan compares unchanged specs by identity. `built` is what this load hands on.
    """

    base: Path
    shown_base: str  # the manifest's folder as the user wrote it, for messages
    defaults: dict[str, Any]
    problems: Problems
    reuse: Mapping[str, Built] = attrs.Factory(dict)
    specs: dict[str, AgentSpec] = attrs.Factory(dict)
    declared: dict[str, str] = attrs.Factory(dict)  # every id seen -> its file's label
    built: dict[str, Built] = attrs.Factory(dict)

    def add_table(self, agents: dict[str, Any], label: str) -> None:
        """Add the agents of one file's `[agents]` table; `label` names the file."""
        for agent_id, table in agents.items():
            if agent_id.startswith("x-"):
                continue
            if agent_id in self.declared:
                message = f"already declared in {self.declared[agent_id]}"
                self.problems.add(label, agent_where(agent_id), message)
                continue
            self.declared[agent_id] = label
            check_id(agent_id, label, self.problems)
            before = self.reuse.get(agent_id)
            if before is not None and before[0] == table and before[1] == self.defaults:
                spec: AgentSpec | None = before[2]
            else:
                spec = build_agent(
                    agent_id,
                    table,
                    label=label,
                    base=self.base,
                    shown_base=self.shown_base,
                    defaults=self.defaults,
                    problems=self.problems,
                )
            if spec is not None:
                self.specs[agent_id] = spec
                if spec.path is None:
                    self.built[agent_id] = (table, self.defaults, spec)

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
        return _spec(agent_id, _merge(defaults, own), root=base, digest="")
    shown = os.path.normpath(os.path.join(shown_base, own["path"]))
    where = agent_where(agent_id)
    folder = read_folder(own["path"], shown, where=where, label=label, base=base, problems=problems)
    if folder is None:
        return None
    values = _merge(_merge(defaults, folder.values), own)
    values["path"] = folder.path
    return _spec(agent_id, values, root=folder.path, digest=folder.digest)


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
