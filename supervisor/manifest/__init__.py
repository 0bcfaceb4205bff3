"""The manifest: frozen attrs models of the manifest (docs/manifest.md), built from TOML once, at the edge.

No other module sees raw TOML dicts: they get a `Manifest` whose agents are fully
resolved `AgentSpec`s (defaults merged, folder agents read, paths absolute, kind known).
Two specs compare equal exactly when the agent would run the same way, so "changed on
reload" is `old != new` (a folder agent's `digest` covers its files).

Reading goes in three steps, and every problem found on the way is reported, all at
once, before anything runs:

1. Each file is parsed (`read_toml`; a folder's ``agent.json`` with `json`).
2. Each table is *structured* by one cattrs converter into an attrs model of the keys as
   written (`AgentKeys`, `Settings`, `Backoff`): unknown keys, wrong types and bad enum
   values are found here, each error carrying the path cattrs gives it. (An agent's
   table goes the fast way first, by the same hooks into a dict of the keys it gives;
   only a table with a problem is structured into the model, to locate it.)
3. Rules that span keys, files or agents are checked on the structured values: limits,
   exactly one kind, folder agents, ids, and `after` naming known ids without cycles.

Every message reads ``FILE: PATH: message``, where PATH is the TOML path of the key:
``agents.toml: agents.web.restart: must be one of "always", "on-failure", "never", not
"sometimes"``. `agent_from_table` (the HTTP API's way in) uses a label such as
``request`` in place of FILE.

This module is the public face, and reads the files and `[supervisor]`: every name
other modules use is imported from here. The work is shared with sibling modules, each
with one job, each importing only those listed before it:

- `model`: the resolved attrs models, constants and `ManifestError`;
- `keys`: the tables as a file writes them (`AgentKeys`, `Document`);
- `convert`: the strict cattrs converter (step 2);
- `check`: problems, located, and the rules types do not say (step 3);
- `files`: the one place that reads files;
- `folder`: folder agents;
- `agents`: an agent's spec from its layers, the agents of a manifest, `after`;
- `schema`: the JSON Schema.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path
from typing import Any

import attrs

from supervisor.manifest.agents import (
    Agents,
    Built,
    build_agent,
    check_after_ids,
    read_defaults,
)
from supervisor.manifest.check import (
    Problems,
    absolute,
    check_id,
    file_tables,
    limit_problems,
    parse_toml,
)
from supervisor.manifest.convert import plain, show
from supervisor.manifest.files import read_text
from supervisor.manifest.folder import folder_digest, folder_id
from supervisor.manifest.keys import AgentKeys, Document
from supervisor.manifest.model import (
    CLUSTER_PATTERN,
    DEFAULT_API,
    ENTRY_PATTERN,
    FOLDER_ENTRY,
    FOLDER_FILES,
    ID_PATTERN,
    KIND_KEYS,
    MEMBER_PATTERN,
    AgentSpec,
    Backoff,
    Kind,
    Manifest,
    ManifestError,
    Probe,
    ReadyMode,
    ReadyProbe,
    RestartMode,
    Settings,
    Source,
)


def json_schema() -> dict[str, Any]:
    """The manifest's JSON Schema (`supervisor.manifest.schema`, imported only for it)."""
    from supervisor.manifest.schema import json_schema as build

    return build()


__all__ = [
    "CLUSTER_PATTERN",
    "DEFAULT_API",
    "ENTRY_PATTERN",
    "FOLDER_ENTRY",
    "FOLDER_FILES",
    "ID_PATTERN",
    "KIND_KEYS",
    "MEMBER_PATTERN",
    "AgentKeys",
    "AgentSpec",
    "Backoff",
    "Kind",
    "Manifest",
    "ManifestError",
    "Parsed",
    "Probe",
    "ReadyMode",
    "ReadyProbe",
    "RestartMode",
    "Settings",
    "Source",
    "agent_from_table",
    "folder_digest",
    "included_files",
    "json_schema",
    "load",
    "parse",
    "read_toml",
    "spec_to_table",
]

_SHARED_KEYS = [field.name for field in attrs.fields(AgentKeys) if field.name not in KIND_KEYS]


# --- Public functions ------------------------------------------------------------------


def read_toml(path: Path) -> dict[str, Any]:
    """Read and parse one TOML file.

    Raises:
      ManifestError: the file cannot be read, or is not valid TOML (the message names
        the file, the line and the column).
    """
    return parse_toml(read_text(path, str(path)), str(path))


# What the last successful `load` built, by manifest path, for the next load to reuse.
_last_built: dict[Path, Built] = {}


@attrs.frozen
class Parsed:
    """A manifest file read and parsed, not yet checked: `load` takes it on from here.

    `reads_files` says whether loading it reads more files (an `include`, or an agent
    with a `path`, whose folder is read and digested): blocking work that a caller on an
    event loop runs in a worker thread, while a small manifest without either may load
    inline (docs/manifest.md, "Limits").
    """

    path: Path
    doc: dict[str, Any]

    @property
    def reads_files(self) -> bool:
        settings, agents = self.doc.get("supervisor"), self.doc.get("agents")
        if isinstance(settings, dict) and settings.get("include"):
            return True
        if not isinstance(agents, dict):
            return False
        return any(isinstance(table, dict) and "path" in table for table in agents.values())


def parse(path: Path) -> Parsed:
    """Read and parse the manifest file `path`, for `load`.

    Raises:
      ManifestError: the file cannot be read (or is not a regular file), or is not
        valid TOML.
    """
    return Parsed(path, read_toml(path))


def load(source: Path | Parsed) -> Manifest:
    """Read and validate a manifest, with its included files and folder agents.

    `source` is the manifest's path, or the manifest as `parse` read it.

    Relative paths (`include` globs, `path`, `cwd`, `state_file`, `api_token_file`)
    resolve against the manifest's folder, in included files too; a relative `cwd` in a
    folder's agent.toml resolves against that folder.

    Raises:
      ManifestError: holding every problem found, each as ``FILE: PATH: message``.
    """
    parsed = source if isinstance(source, Parsed) else parse(source)
    path = parsed.path
    label = str(path)
    base = Path(os.path.dirname(os.path.abspath(path)))
    problems = Problems()
    tables = file_tables(Document, parsed.doc, label, problems)
    settings = _settings(tables.supervisor, label, base, problems)
    included = list(_included(settings.include, path, base, problems))
    _check_state_file(settings.state_file, path, [p for p, _ in included], label, problems)
    defaults = read_defaults(tables.defaults, label, base, problems)
    reuse = _last_built.get(path)
    agents = Agents(base, os.path.dirname(path), defaults, problems, reuse)
    agents.add_table(tables.agents, label)
    for included_path, included_label in included:
        agents.add_file(included_path, included_label)
    agents.check_after()
    problems.raise_if_any()
    _last_built.clear()  # one manifest's worth, not one per path ever loaded
    _last_built[path] = agents.built()
    return Manifest(path=path, settings=settings, agents=agents.specs, defaults=tables.defaults)


def agent_from_table(
    agent_id: str | None,
    table: dict[str, Any],
    *,
    base: Path,
    defaults: dict[str, Any] | None = None,
    known_ids: Collection[str] = (),
    label: str = "request",
) -> AgentSpec:
    """Validate one agent given as a table, as the HTTP API's ``POST /agents`` body.

    The same rules and messages as `load`, with `label` in place of the file name.

    Args:
      agent_id: the agent's id, or None for a `path` agent: then the folder's name is
        the id.
      table: the agent's keys (without ``id``).
      base: the folder relative paths resolve against, and the import root of an
        `entry` agent (the manifest's folder).
      defaults: a `[defaults]` table as written (`Manifest.defaults`).
      known_ids: the ids this agent's `after` may name.
      label: names the source in messages.

    Raises:
      ManifestError: holding every problem found.
    """
    problems = Problems()
    base = Path(os.path.abspath(base))
    default_values = read_defaults(defaults or {}, label, base, problems)
    if agent_id is not None:
        check_id(agent_id, label, problems)
    elif (agent_id := folder_id(table, base)) is not None:
        check_id(agent_id, label, problems, hint=' (it is the folder\'s name; give an "id")')
    else:
        problems.add(label, "id", 'required, unless "path" names the agent\'s folder')
        problems.raise_if_any()
    assert agent_id is not None
    spec = build_agent(
        agent_id,
        table,
        label=label,
        base=base,
        shown_base=str(base),
        defaults=default_values,
        problems=problems,
    )
    if spec is not None:
        check_after_ids([spec], set(known_ids), lambda _: label, problems)
    problems.raise_if_any()
    assert spec is not None
    return spec


def spec_to_table(spec: AgentSpec) -> dict[str, Any]:
    """The agent's keys as a JSON- and TOML-safe table, as the API shows them.

    It is what `agent_from_table` takes back to build an equal spec (given the same
    `base`): one kind key, `path` for a folder agent (its entry or command stays in its
    folder) and every other key resolved (absolute `cwd`, defaults filled in, signal by
    name, dates in `params` as ISO strings). `id`, `kind`, `root` and `digest` are left
    out: the API shows `id` and `kind` beside the spec, and the rest follow from it.
    """
    table: dict[str, Any] = {}
    if spec.path is not None:
        table["path"] = str(spec.path)
    elif spec.command is not None:
        table["command"] = list(spec.command)
    else:
        table["entry"] = spec.entry
    for name in _SHARED_KEYS:
        value = getattr(spec, name)
        if value is not None:  # no liveness probe: the key is left out (TOML has no null)
            table[name] = plain(value)
    return table


# --- The manifest's own keys: include and [supervisor] --------------------------------


def included_files(m: Manifest) -> list[Path]:
    """The files `m`'s `include` globs match now, in order, each once: the resolution
    `load` uses (also for ``--watch``, `supervisor.watch`). Missing ones are left out."""
    base = Path(os.path.dirname(os.path.abspath(m.path)))
    return [p for p, _ in _included(m.settings.include, m.path, base, Problems())]


def _check_state_file(
    state_file: Path | None, manifest: Path, included: list[Path], label: str, problems: Problems
) -> None:
    """A state file is written over: never the manifest, an included file or a folder."""
    if state_file is None:
        return
    if os.path.isdir(state_file):
        message = f"{show(str(state_file))} is a folder; name a file (in it, say)"
        problems.add(label, "supervisor.state_file", message)
        return
    real = os.path.realpath(state_file)
    for other in (manifest, *included):
        if os.path.realpath(other) == real:
            message = (
                f"{show(str(state_file))} is the manifest or a file it includes, which the "
                "supervisor would overwrite; name a file of its own"
            )
            problems.add(label, "supervisor.state_file", message)
            return


def _included(
    patterns: Iterable[str], manifest: Path, base: Path, problems: Problems
) -> Iterator[tuple[Path, str]]:
    """(path, label) of each file the `include` globs match, in order, each once."""
    shown_base = os.path.dirname(manifest)
    seen = {os.path.abspath(manifest)}
    for i, pattern in enumerate(patterns):
        matches = sorted(glob.glob(pattern, root_dir=base, recursive=True))
        if not matches and not glob.has_magic(pattern):
            problems.add(str(manifest), f"supervisor.include[{i}]", f"no such file {show(pattern)}")
        for match in matches:
            full = os.path.normpath(os.path.join(base, match))
            # Not only regular files: reading refuses a FIFO or a device with a message.
            if full not in seen and not os.path.isdir(full):
                seen.add(full)
                yield Path(full), os.path.normpath(os.path.join(shown_base, match))


def _settings(table: dict[str, Any], label: str, base: Path, problems: Problems) -> Settings:
    settings = problems.structure(Settings, table, label, "supervisor")
    if settings is None:
        return Settings()
    values = {field.name: getattr(settings, field.name) for field in attrs.fields(Settings)}
    problems.add_all(label, limit_problems(Settings, values, lambda: "supervisor"))
    if not _valid_api(settings.api):
        problems.add(
            label,
            "supervisor.api",
            f'must be "HOST:PORT", "unix:/path/to.sock" or "" (no API), not {show(settings.api)}',
        )
    if not re.match(CLUSTER_PATTERN, settings.cluster):
        problems.add(
            label,
            "supervisor.cluster",
            'must be "etcd://HOST:PORT[,HOST:PORT...][/NAMESPACE]" or "" (runs alone), '
            f"not {show(settings.cluster)}",
        )
    if not re.match(MEMBER_PATTERN, settings.member):
        problems.add(
            label,
            "supervisor.member",
            "must be 1 to 253 letters, digits, '_', '.' or '-', starting with a letter or a "
            f'digit (or "" for the host name), not {show(settings.member)}',
        )
    return attrs.evolve(
        settings,
        state_file=settings.state_file and absolute(base, str(settings.state_file)),
        api_token_file=settings.api_token_file and absolute(base, str(settings.api_token_file)),
        etcd_ca=settings.etcd_ca and absolute(base, str(settings.etcd_ca)),
        etcd_cert=settings.etcd_cert and absolute(base, str(settings.etcd_cert)),
        etcd_key=settings.etcd_key and absolute(base, str(settings.etcd_key)),
        etcd_password_file=settings.etcd_password_file
        and absolute(base, str(settings.etcd_password_file)),
    )


def _valid_api(api: str) -> bool:
    if api == "" or (api.startswith("unix:") and len(api) > len("unix:")):
        return True
    host, _, port = api.rpartition(":")
    return bool(host) and port.isdigit() and int(port) <= 65535
