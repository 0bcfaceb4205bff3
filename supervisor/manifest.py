"""The manifest: frozen attrs models of SPEC §1, built from TOML once, at the edge.

No other module sees raw TOML dicts: they get a `Manifest` whose agents are fully
resolved `AgentSpec`s (defaults merged, folder agents read, paths absolute, kind known).
Two specs compare equal exactly when the agent would run the same way, so "changed on
reload" is `old != new` (a folder agent's `digest` covers its files).

Reading goes in three steps, and every problem found on the way is reported, all at
once, before anything runs:

1. Each file is parsed (`read_toml`; a folder's ``agent.json`` with `json`).
2. Each table is *structured* by one cattrs converter into an attrs model of the keys as
   written (`AgentKeys`, `Settings`, `Backoff`): unknown keys, wrong types and bad enum
   values are found here, each error carrying the path cattrs gives it.
3. Rules that span keys, files or agents are checked on the structured values: limits,
   exactly one kind, folder agents, ids, and `after` naming known ids without cycles.

Every message reads ``FILE: PATH: message``, where PATH is the TOML path of the key:
``agents.toml: agents.web.restart: must be one of "always", "on-failure", "never", not
"sometimes"``. `agent_from_table` (the HTTP API's way in) uses a label such as
``request`` in place of FILE.
"""

from __future__ import annotations

import difflib
import glob
import graphlib
import hashlib
import json
import math
import os
import re
import shlex
import signal
import types
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from datetime import date, datetime, time
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import attrs
import cattrs
import rtoml
from attrs import AttrsInstance
from cattrs.cols import homogenous_tuple_structure_factory
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError
from cattrs.gen import make_dict_structure_fn, make_mapping_structure_fn

Kind = Literal["in-process", "process"]
RestartMode = Literal["always", "on-failure", "never"]
ReadyMode = Literal["immediate", "notify"]
Source = Literal["manifest", "api"]

DEFAULT_API = "127.0.0.1:7070"
ID_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,62}$"

KIND_KEYS = ("entry", "command", "path")
FOLDER_FILES = ("agent.toml", "agent.json")
FOLDER_ENTRY = "agent:main"  # the entry of a folder that holds only an agent.py
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
ENTRY_PATTERN = rf"^{_NAME}(\.{_NAME})*:{_NAME}(\.{_NAME})*$"  # "pkg.mod:func" or "mod:obj.attr"
# [supervisor] cluster and member; "" means "alone" and "the host name".
CLUSTER_PATTERN = r"^(etcd://[^/,\s]+(,[^/,\s]+)*(/[A-Za-z0-9_.-]+)?/?)?$"
MEMBER_PATTERN = r"^([A-Za-z0-9][A-Za-z0-9_.-]{0,252})?$"

T = TypeVar("T")
A = TypeVar("A", bound=AttrsInstance)


def _doc(text: str, **rules: Any) -> dict[str, Any]:
    """Field metadata: the description editors show (via `json_schema`), and rules.

    Rules hold for the loader and the schema alike: `minimum` and `maximum` (of a
    number, or of each item of an array), `pattern` (of a string), `non_empty`.
    """
    return {"doc": text, **rules}


# --- The resolved models: what the rest of the supervisor sees ---------------------


@attrs.frozen(kw_only=True)
class Backoff:
    """Delay before restart n: ``min(max, initial * factor**(n-1))``, ± ``jitter`` fraction."""

    initial: float = attrs.field(
        default=0.5, metadata=_doc("seconds to wait before the first restart", minimum=0)
    )
    max: float = attrs.field(default=30.0, metadata=_doc("longest wait, in seconds", minimum=0))
    factor: float = attrs.field(
        default=2.0, metadata=_doc("each further restart waits this many times longer", minimum=1)
    )
    jitter: float = attrs.field(
        default=0.1,
        metadata=_doc(
            "random spread, as a fraction of the wait: 0.1 is ±10%", minimum=0, maximum=1
        ),
    )


@attrs.frozen(kw_only=True)
class AgentSpec:
    """One agent, fully resolved: what to run and how to keep it alive.

    `kind` is what runs: an async callable (`entry`, imported with `root` first on the
    import path) or a child process (`command`, in `cwd`). `path` is set for folder
    agents only; `digest` then hashes the folder's files.
    """

    id: str
    kind: Kind
    entry: str | None = None
    command: tuple[str, ...] | None = None
    path: Path | None = None
    root: Path
    digest: str = ""
    params: dict[str, Any] = attrs.field(factory=dict)
    env: dict[str, str] = attrs.field(factory=dict)
    cwd: Path
    restart: RestartMode = "on-failure"
    success_codes: tuple[int, ...] = (0,)
    backoff: Backoff = Backoff()
    reset_after: float = 60.0
    max_restarts: int = 5
    restart_window: float = 60.0
    ready: ReadyMode = "immediate"
    start_timeout: float = 30.0
    stop_signal: signal.Signals = signal.SIGTERM
    stop_timeout: float = 10.0
    after: tuple[str, ...] = ()
    critical: bool = False
    enabled: bool = True


@attrs.frozen(kw_only=True)
class Settings:
    """The `[supervisor]` table."""

    api: str = attrs.field(
        default=DEFAULT_API,
        metadata=_doc(
            'control API address: "HOST:PORT", "unix:/path/to.sock", or "" for no API;'
            " --api overrides it"
        ),
    )
    shutdown_timeout: float = attrs.field(
        default=30.0, metadata=_doc("seconds for everything to stop on SIGTERM/SIGINT", minimum=0)
    )
    state_file: Path | None = attrs.field(
        default=None,
        metadata=_doc('TOML file keeping the agents loaded over the API; "" keeps them in memory'),
    )
    api_token_file: Path | None = attrs.field(
        default=None, metadata=_doc("file holding the API token; $SUPERVISOR_TOKEN also sets it")
    )
    include: tuple[str, ...] = attrs.field(
        default=(),
        metadata=_doc("globs relative to this file; included files hold [agents.*] tables only"),
    )
    cluster: str = attrs.field(
        default="",
        metadata=_doc(
            'share this manifest with other supervisors through etcd: "etcd://HOST:PORT'
            '[,HOST:PORT...][/NAMESPACE]"; "" runs alone; --cluster overrides it',
            pattern=CLUSTER_PATTERN,
        ),
    )
    member: str = attrs.field(
        default="",
        metadata=_doc(
            'this supervisor\'s name in the cluster, unique there; "" is the host name;'
            " --member overrides it",
            pattern=MEMBER_PATTERN,
        ),
    )
    lease_ttl: float = attrs.field(
        default=10.0,
        metadata=_doc(
            "seconds a member that lost etcd keeps its agents' ownership; its agents stop"
            " within half of it, and others take them over after it",
            minimum=1,
        ),
    )


@attrs.frozen(kw_only=True)
class Manifest:
    """A whole, valid manifest. `agents` keeps file order (included files after).

    `defaults` is the `[defaults]` table as written: pass it to `agent_from_table` so
    that agents loaded over the API get the same defaults.
    """

    path: Path
    settings: Settings
    agents: dict[str, AgentSpec]
    defaults: dict[str, Any] = attrs.field(factory=dict)


class ManifestError(Exception):
    """The manifest is invalid. `errors` holds every located message, one per problem.

    Each message names the file, the agent and the key, e.g.
    ``agents.toml: agents.web.restart: must be one of "always", "on-failure", "never", not "sometimes"``.
    """

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


# --- The keys as written -------------------------------------------------------------


@attrs.frozen(kw_only=True)
class AgentKeys:
    """The keys one table gives for an agent, type-checked; None means "not given here".

    An agent's keys come in layers, each one structured into this model on its own so
    that its errors name its own file: `[defaults]`, a folder's agent.toml, the
    manifest's `[agents.ID]` table (or an API request's body).
    """

    entry: str | None = attrs.field(
        default=None,
        metadata=_doc(
            'in-process agent: an async callable "module:function", imported with the'
            " manifest's folder first on the import path",
            pattern=ENTRY_PATTERN,
        ),
    )
    command: tuple[str, ...] | str | None = attrs.field(
        default=None,
        metadata=_doc(
            "process agent: the command line, an array or a string split like a shell;"
            " it runs in its own process group",
            non_empty=True,
        ),
    )
    path: str | None = attrs.field(
        default=None,
        metadata=_doc(
            "folder agent: a folder holding agent.toml or agent.json (agent keys) and its"
            ' code; with only an agent.py, the entry is "agent:main" imported from it',
            non_empty=True,
        ),
    )
    params: dict[str, Any] | None = attrs.field(
        default=None, metadata=_doc("free table handed to in-process agents as ctx.params")
    )
    env: dict[str, str] | None = attrs.field(
        default=None, metadata=_doc("environment variables added for processes")
    )
    cwd: str | None = attrs.field(
        default=None,
        metadata=_doc(
            "working directory for processes, relative to the manifest's folder; default:"
            " the manifest's folder, or the agent's folder for a folder agent"
        ),
    )
    restart: RestartMode | None = attrs.field(
        default=None, metadata=_doc("when to restart the agent after it ends")
    )
    success_codes: tuple[int, ...] | None = attrs.field(
        default=None, metadata=_doc("exit codes that are not failures", minimum=0, maximum=255)
    )
    backoff: Backoff | None = attrs.field(
        default=None,
        metadata=_doc("delay before restart n: min(max, initial * factor**(n-1)), ± jitter"),
    )
    reset_after: float | None = attrs.field(
        default=None,
        metadata=_doc("seconds of healthy running that forgive earlier failures", minimum=0),
    )
    max_restarts: int | None = attrs.field(
        default=None,
        metadata=_doc(
            "restarts allowed within restart_window seconds; one more and the agent is failed",
            minimum=0,
        ),
    )
    restart_window: float | None = attrs.field(
        default=None, metadata=_doc("seconds over which max_restarts counts", minimum=0)
    )
    ready: ReadyMode | None = attrs.field(
        default=None,
        metadata=_doc(
            '"immediate": running once launched; "notify": the agent says so, with'
            " ctx.ready() or READY=1 on $NOTIFY_SOCKET"
        ),
    )
    start_timeout: float | None = attrs.field(
        default=None,
        metadata=_doc("seconds to become ready; past it, the start is a failure", minimum=0),
    )
    stop_signal: signal.Signals | None = attrs.field(
        default=None,
        metadata=_doc('first signal sent to the process group on stop, e.g. "SIGTERM"'),
    )
    stop_timeout: float | None = attrs.field(
        default=None,
        metadata=_doc(
            "seconds of grace for cleanup; then SIGKILL to the group, or a hard cancel",
            minimum=0,
        ),
    )
    after: tuple[str, ...] | None = attrs.field(
        default=None,
        metadata=_doc("ids that must be running before this agent starts; it stops before them"),
    )
    critical: bool | None = attrs.field(
        default=None,
        metadata=_doc("if this agent ends failed, the supervisor stops everything and exits 3"),
    )
    enabled: bool | None = attrs.field(default=None, metadata=_doc("false: declared but not run"))


@attrs.frozen(kw_only=True)
class _Document:
    """The top level of a manifest file; structured only to check its table names."""

    supervisor: dict[str, Any] = attrs.field(
        factory=dict, metadata=_doc("settings of the supervisor itself")
    )
    defaults: dict[str, Any] = attrs.field(
        factory=dict,
        metadata=_doc(
            "keys every agent gets unless it gives its own; params and env merge key by key"
        ),
    )
    agents: dict[str, Any] = attrs.field(
        factory=dict, metadata=_doc("the agents, by id: [a-z0-9][a-z0-9_.-]{0,62}")
    )


@attrs.frozen(kw_only=True)
class _Included:
    """The top level of an included file: agents only."""

    agents: dict[str, Any] = attrs.field(factory=dict, metadata=_doc("the agents, by id"))


# --- Public functions ------------------------------------------------------------------


def read_toml(path: Path) -> dict[str, Any]:
    """Read and parse one TOML file.

    Raises:
      ManifestError: the file cannot be read, or is not valid TOML (the message names
        the file, the line and the column).
    """
    return _parse_toml(_read_text(path, str(path)), str(path))


def load(path: Path) -> Manifest:
    """Read and validate a manifest, with its included files and folder agents.

    Relative paths (`include` globs, `path`, `cwd`, `state_file`, `api_token_file`)
    resolve against the manifest's folder, in included files too; a relative `cwd` in a
    folder's agent.toml resolves against that folder.

    Raises:
      ManifestError: holding every problem found, each as ``FILE: PATH: message``.
    """
    label = str(path)
    base = Path(os.path.dirname(os.path.abspath(path)))
    problems = _Problems()
    tables = _tables(_Document, read_toml(path), label, problems)
    settings = _settings(tables.supervisor, label, base, problems)
    included = list(_included(settings.include, path, base, problems))
    defaults = _defaults(tables.defaults, label, base, problems)
    agents = _Agents(base, os.path.dirname(path), defaults, problems)
    agents.add_table(tables.agents, label)
    for included_path, included_label in included:
        agents.add_file(included_path, included_label)
    agents.check_after()
    problems.raise_if_any()
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
    problems = _Problems()
    base = Path(os.path.abspath(base))
    default_values = _defaults(defaults or {}, label, base, problems)
    if agent_id is not None:
        _check_id(agent_id, label, problems)
    elif (agent_id := _folder_id(table, base)) is not None:
        _check_id(agent_id, label, problems, hint=' (it is the folder\'s name; give an "id")')
    else:
        problems.add(label, "id", 'required, unless "path" names the agent\'s folder')
        problems.raise_if_any()
    assert agent_id is not None
    spec = _agent(
        agent_id,
        table,
        label=label,
        base=base,
        shown_base=str(base),
        defaults=default_values,
        problems=problems,
    )
    if spec is not None:
        _check_after_ids([spec], set(known_ids), lambda _: label, problems)
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
        table[name] = _plain(getattr(spec, name))
    return table


def json_schema() -> dict[str, Any]:
    """The manifest's JSON Schema (draft 2020-12), generated from the attrs models.

    Editors' TOML plugins use it to complete keys, show their meaning and default, and
    flag typos; CI can check a manifest with it. It checks what a schema can: names,
    types, enums, limits, exactly one kind. `supervisor check` checks everything.
    """
    for cls in (Backoff, Settings, AgentSpec, AgentKeys, _Document):
        attrs.resolve_types(cls)
    agent = _object_schema(
        AgentKeys,
        defaults_from=AgentSpec,
        description='an agent: exactly one of "entry", "command" or "path", and its other keys',
    )
    agent["oneOf"] = [{"required": [key]} for key in KIND_KEYS]
    doc = {field.name: field.metadata["doc"] for field in attrs.fields(_Document)}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "supervisor manifest",
        "description": "Agents for the supervisor to run and keep alive (docs/manifest.md).",
        **_closed(
            {
                "supervisor": {"$ref": "#/$defs/supervisor", "description": doc["supervisor"]},
                "defaults": {"$ref": "#/$defs/defaults", "description": doc["defaults"]},
                "agents": {
                    "type": "object",
                    "description": doc["agents"],
                    "patternProperties": {
                        _SCHEMA_ID_PATTERN: {"$ref": "#/$defs/agent"},
                        "^x-": {},
                    },
                    "additionalProperties": False,
                },
            }
        ),
        "$defs": {
            "supervisor": _object_schema(
                Settings, defaults_from=Settings, description=doc["supervisor"]
            ),
            "defaults": _object_schema(
                AgentKeys, defaults_from=AgentSpec, description=doc["defaults"], omit=KIND_KEYS
            ),
            "agent": agent,
            "backoff": _object_schema(
                Backoff,
                defaults_from=Backoff,
                description=attrs.fields(AgentKeys).backoff.metadata["doc"],
            ),
        },
    }


def folder_digest(folder: Path) -> str:
    """A hash of a folder's files, names and contents, so that editing its code shows.

    Caches are skipped: ``__pycache__``, ``*.pyc``, ``.git`` and tools' ``.*_cache``
    folders. A file that cannot be read counts by its name only.
    """
    digest = hashlib.blake2b(digest_size=16)
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(name for name in dirnames if not _skipped_dir(name))
        for name in sorted(filenames):
            if name.endswith(".pyc"):
                continue
            file = os.path.join(dirpath, name)
            digest.update(os.path.relpath(file, folder).encode() + b"\0")
            try:
                with open(file, "rb") as f:
                    digest.update(hashlib.blake2b(f.read(), digest_size=16).digest())
            except OSError:
                digest.update(b"\0unreadable\0")
    return digest.hexdigest()


# --- Problems: every error, located, raised at once ---------------------------------


@attrs.define
class _Problems:
    """Collects located messages, so that one run reports every problem."""

    messages: list[str] = attrs.Factory(list)

    def add(self, label: str, where: str, message: str) -> None:
        self.messages.append(f"{label}: {where}: {message}" if where else f"{label}: {message}")

    def add_all(self, label: str, located: Iterable[tuple[str, str]]) -> None:
        for where, message in located:
            self.add(label, where, message)

    def structure(self, cls: type[T], table: Any, label: str, where: str) -> T | None:
        """`table` structured into `cls`, after reporting any problems.

        If some keys are bad, the others are still structured (so that the checks that
        follow still run on them and report what they find too); None if that fails.
        """
        try:
            return _converter.structure(table, cls)
        except Exception as e:
            self.add_all(label, _located(e, where))
            bad = _bad_keys(e)
        if not bad or not isinstance(table, dict):
            return None
        try:
            return _converter.structure({k: v for k, v in table.items() if k not in bad}, cls)
        except Exception:
            return None

    def raise_if_any(self) -> None:
        if self.messages:
            raise ManifestError(self.messages)


class _Invalid(ValueError):
    """A value is wrong; the message says how, for a user, and cattrs locates it."""


def _bad_keys(exc: BaseException) -> set[str]:
    """The keys of a table that failed to structure; empty if it is not that simple."""
    if not isinstance(exc, ClassValidationError):
        return set()
    with_notes, others = exc.group_exceptions()
    bad = {note.name for _, note in with_notes}
    for sub in others:
        if not isinstance(sub, ForbiddenExtraKeysError):
            return set()
        bad |= sub.extra_fields
    return bad


def _located(exc: BaseException, where: str) -> Iterator[tuple[str, str]]:
    """Walk a cattrs error group into (TOML path, message) pairs."""
    if isinstance(exc, ClassValidationError):
        with_notes, others = exc.group_exceptions()
        for sub, note in with_notes:
            yield from _located(sub, _join(where, note.name))
        for sub in others:
            if isinstance(sub, ForbiddenExtraKeysError):
                known = [field.name for field in attrs.fields(sub.cl)]
                for key in sorted(sub.extra_fields):
                    yield _join(where, key), "unknown key" + _did_you_mean(key, known)
            else:
                yield from _located(sub, where)
    elif isinstance(exc, IterableValidationError):
        items, others = exc.group_exceptions()
        for sub, item in items:
            index = item.index
            yield from _located(
                sub, f"{where}[{index}]" if isinstance(index, int) else _join(where, index)
            )
        for sub in others:
            yield from _located(sub, where)
    elif isinstance(exc, _Invalid):
        yield where, str(exc)
    else:  # a bug of ours rather than the user's; still say where
        yield where, f"invalid value ({type(exc).__name__}: {exc})"


# --- Reading files -----------------------------------------------------------------


def _read_text(path: Path, label: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ManifestError([f"{label}: not UTF-8 text ({e.reason} at byte {e.start})"])
    except OSError as e:
        raise ManifestError([f"{label}: cannot read: {e.strerror or e}"])


_TOML_POSITION = re.compile(r"^(?P<msg>.*) at line (?P<line>\d+) column (?P<column>\d+)$", re.S)


def _parse_toml(text: str, label: str) -> dict[str, Any]:
    try:
        return dict(rtoml.loads(text))
    except rtoml.TomlParsingError as e:
        found = _TOML_POSITION.match(str(e))
        if found is None:
            raise ManifestError([f"{label}: invalid TOML: {e}"])
        line, column, msg = found["line"], found["column"], found["msg"]
        raise ManifestError([f"{label}: line {line}, column {column}: invalid TOML: {msg}"])


def _parse_json(text: str, label: str) -> dict[str, Any]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise ManifestError([f"{label}: line {e.lineno}, column {e.colno}: invalid JSON: {e.msg}"])
    if not isinstance(doc, dict):
        raise ManifestError([f"{label}: must hold an object of agent keys, not {_show(doc)}"])
    return doc


def _tables(cls: type[A], doc: dict[str, Any], label: str, problems: _Problems) -> A:
    """The top-level tables of a file; a table that is not a table is left out."""
    tables = problems.structure(cls, doc, label, "")
    if tables is not None:
        return tables
    names = [field.name for field in attrs.fields(cls)]
    return cls(**{name: doc[name] for name in names if isinstance(doc.get(name), dict)})


def _included(
    patterns: Iterable[str], manifest: Path, base: Path, problems: _Problems
) -> Iterator[tuple[Path, str]]:
    """(path, label) of each file the `include` globs match, in order, each once."""
    shown_base = os.path.dirname(manifest)
    seen = {os.path.abspath(manifest)}
    for i, pattern in enumerate(patterns):
        matches = sorted(glob.glob(pattern, root_dir=base, recursive=True))
        if not matches and not glob.has_magic(pattern):
            problems.add(
                str(manifest), f"supervisor.include[{i}]", f"no such file {_show(pattern)}"
            )
        for match in matches:
            full = os.path.normpath(os.path.join(base, match))
            if full not in seen and os.path.isfile(full):
                seen.add(full)
                yield Path(full), os.path.normpath(os.path.join(shown_base, match))


# --- [supervisor] and [defaults] ----------------------------------------------------


def _settings(table: dict[str, Any], label: str, base: Path, problems: _Problems) -> Settings:
    settings = problems.structure(Settings, table, label, "supervisor")
    if settings is None:
        return Settings()
    values = {field.name: getattr(settings, field.name) for field in attrs.fields(Settings)}
    problems.add_all(label, _limit_problems(Settings, values, "supervisor"))
    if not _valid_api(settings.api):
        problems.add(
            label,
            "supervisor.api",
            f'must be "HOST:PORT", "unix:/path/to.sock" or "" (no API), not {_show(settings.api)}',
        )
    if not re.match(CLUSTER_PATTERN, settings.cluster):
        problems.add(
            label,
            "supervisor.cluster",
            'must be "etcd://HOST:PORT[,HOST:PORT...][/NAMESPACE]" or "" (runs alone), '
            f"not {_show(settings.cluster)}",
        )
    if not re.match(MEMBER_PATTERN, settings.member):
        problems.add(
            label,
            "supervisor.member",
            "must be 1 to 253 letters, digits, '_', '.' or '-', starting with a letter or a "
            f'digit (or "" for the host name), not {_show(settings.member)}',
        )
    return attrs.evolve(
        settings,
        state_file=settings.state_file and _absolute(base, str(settings.state_file)),
        api_token_file=settings.api_token_file and _absolute(base, str(settings.api_token_file)),
    )


def _valid_api(api: str) -> bool:
    if api == "" or (api.startswith("unix:") and len(api) > len("unix:")):
        return True
    host, _, port = api.rpartition(":")
    return bool(host) and port.isdigit() and int(port) <= 65535


def _defaults(table: dict[str, Any], label: str, base: Path, problems: _Problems) -> dict[str, Any]:
    """The validated keys of a `[defaults]` table; the kind keys have no place there."""
    values = _read_layer(table, label=label, where="defaults", base=base, problems=problems) or {}
    for key in KIND_KEYS:
        if values.pop(key, None) is not None:
            problems.add(
                label, f"defaults.{key}", "not allowed in [defaults]: each agent says what it runs"
            )
    return values


# --- Agents --------------------------------------------------------------------------


@attrs.define
class _Agents:
    """The agents of one manifest, gathered file by file, then checked together."""

    base: Path
    shown_base: str  # the manifest's folder as the user wrote it, for messages
    defaults: dict[str, Any]
    problems: _Problems
    specs: dict[str, AgentSpec] = attrs.Factory(dict)
    declared: dict[str, str] = attrs.Factory(dict)  # every id seen -> its file's label

    def add_table(self, agents: dict[str, Any], label: str) -> None:
        for agent_id, table in agents.items():
            if agent_id.startswith("x-"):
                continue
            if agent_id in self.declared:
                where = f"agents.{_toml_key(agent_id)}"
                self.problems.add(label, where, f"already declared in {self.declared[agent_id]}")
                continue
            self.declared[agent_id] = label
            _check_id(agent_id, label, self.problems)
            spec = _agent(
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

    def add_file(self, path: Path, label: str) -> None:
        """Add the agents of an included file, which may hold nothing else."""
        try:
            doc = _parse_toml(_read_text(path, label), label)
        except ManifestError as e:
            self.problems.messages.extend(e.errors)
            return
        for name in ("supervisor", "defaults"):
            if doc.pop(name, None) is not None:
                self.problems.add(
                    label, name, "not allowed in an included file, which holds [agents.*] only"
                )
        self.add_table(_tables(_Included, doc, label, self.problems).agents, label)

    def check_after(self) -> None:
        specs = self.specs.values()
        _check_after_ids(specs, self.declared.keys(), self.declared.__getitem__, self.problems)
        for cycle in _cycles(self.specs):
            where = f"agents.{_toml_key(cycle[0])}.after"
            self.problems.add(self.declared[cycle[0]], where, "cycle: " + " -> ".join(cycle))


_ID = re.compile(ID_PATTERN)


def _check_id(agent_id: str, label: str, problems: _Problems, hint: str = "") -> None:
    where = f"agents.{_toml_key(agent_id)}"
    if agent_id.startswith("x-"):
        problems.add(label, where, 'bad id: ids starting with "x-" are kept for tools' + hint)
    elif not _ID.match(agent_id):
        problems.add(
            label,
            where,
            'bad id: use 1 to 63 of a-z, 0-9, "_", "." and "-", starting with a letter or digit'
            + hint,
        )


def _folder_id(table: Any, base: Path) -> str | None:
    """The id of a `path` agent given without one: its folder's name."""
    written = table.get("path") if isinstance(table, dict) else None
    if not isinstance(written, str) or not written:
        return None
    return _absolute(base, written).name


def _agent(
    agent_id: str,
    table: Any,
    *,
    label: str,
    base: Path,
    shown_base: str,
    defaults: dict[str, Any],
    problems: _Problems,
) -> AgentSpec | None:
    """Build one agent from its table over `defaults`; None if it has problems (reported).

    Precedence, lowest first: built-in defaults, `[defaults]`, a folder's agent.toml,
    the agent's own table.
    """
    where = f"agents.{_toml_key(agent_id)}"
    given = [key for key in KIND_KEYS if isinstance(table, dict) and table.get(key) is not None]
    if len(given) != 1 and isinstance(table, dict):
        problems.add(
            label, where, _kinds_message(given, KIND_KEYS) + _dotted_id_hint(agent_id, table)
        )
    own = _read_layer(table, label=label, where=where, base=base, problems=problems)
    if own is None or len(given) != 1:
        return None
    if "path" not in own:
        return _spec(agent_id, _merge(defaults, own), root=base, digest="")
    shown = os.path.normpath(os.path.join(shown_base, own["path"]))
    folder = _folder(own["path"], shown, where=where, label=label, base=base, problems=problems)
    if folder is None:
        return None
    values = _merge(defaults, folder.values, own)
    values["path"] = folder.path
    return _spec(agent_id, values, root=folder.path, digest=folder.digest)


def _dotted_id_hint(agent_id: str, table: dict[str, Any]) -> str:
    """A hint for ``[agents.api.v2]``, which TOML reads as agent "api" with a table "v2"."""
    for key, value in table.items():
        if isinstance(value, dict) and any(kind in value for kind in KIND_KEYS):
            dotted = json.dumps(f"{agent_id}.{key}")
            return f"; for the id {dotted}, quote it: [agents.{dotted}]"
    return ""


def _kinds_message(given: Sequence[str], allowed: Sequence[str]) -> str:
    choices = ", ".join(f'"{key}"' for key in allowed[:-1]) + f' or "{allowed[-1]}"'
    if not given:
        return f"needs one of {choices}"
    shown = ", ".join(f'"{key}"' for key in given[:-1]) + f' and "{given[-1]}"'
    return f"has {shown}; give exactly one of {choices}"


def _read_layer(
    table: Any, *, label: str, where: str, base: Path, problems: _Problems
) -> dict[str, Any] | None:
    """The keys `table` gives, checked, with `cwd` made absolute against `base`.

    None if the table cannot be structured; its problems are reported either way.
    """
    keys = problems.structure(AgentKeys, table, label, where)
    if keys is None:
        return None
    # Only the keys given here: they decide what this layer overrides. (A JSON null is
    # taken as "not given".) `x-` keys were dropped while structuring.
    values = {
        key: value
        for key in table
        if key in _AGENT_KEYS and (value := getattr(keys, key)) is not None
    }
    problems.add_all(label, _limit_problems(AgentKeys, values, where))
    problems.add_all(label, _value_problems(values, where))
    if "cwd" in values:
        values["cwd"] = _absolute(base, values["cwd"])
    return values


_ENTRY = re.compile(ENTRY_PATTERN)


def _value_problems(values: dict[str, Any], where: str) -> Iterator[tuple[str, str]]:
    """What the types alone do not say about an agent's values."""
    entry = values.get("entry")
    if entry is not None and not _ENTRY.match(entry):
        yield (
            f"{where}.entry",
            f'must be "module:function", like "app.worker:main", not {_show(entry)}',
        )
    for name in values.get("env", {}):
        if not name or "=" in name or "\0" in name:
            yield _join(f"{where}.env", name), 'must be a variable name, without "="'
    # TOML has no null: a params table from JSON with one could not be kept in a
    # state file, nor written in a manifest.
    for path in _nulls(values.get("params", {}), f"{where}.params"):
        yield path, "must not be null (TOML has no null; leave the key out)"
    if values.get("path") == "":
        yield f"{where}.path", "must not be empty"


def _nulls(value: Any, where: str) -> Iterator[str]:
    """The paths of the nulls inside `value`."""
    if value is None:
        yield where
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _nulls(item, _join(where, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _nulls(item, f"{where}[{i}]")


def _limit_problems(cls: type, values: Mapping[str, Any], where: str) -> Iterator[tuple[str, str]]:
    """Values outside the `minimum`/`maximum` in their field's metadata (items of arrays)."""
    limits = _limits(cls)
    for name, value in values.items():
        if attrs.has(type(value)):
            nested = {field.name: getattr(value, field.name) for field in attrs.fields(type(value))}
            yield from _limit_problems(type(value), nested, f"{where}.{name}")
        elif name in limits and isinstance(value, tuple):
            for i, item in enumerate(value):
                yield from _out_of(limits[name], item, f"{where}.{name}[{i}]")
        elif name in limits:
            yield from _out_of(limits[name], value, f"{where}.{name}")


_limits_cache: dict[type, dict[str, tuple[float | None, float | None]]] = {}


def _limits(cls: type) -> dict[str, tuple[float | None, float | None]]:
    if cls not in _limits_cache:
        _limits_cache[cls] = {
            field.name: (field.metadata.get("minimum"), field.metadata.get("maximum"))
            for field in attrs.fields(cls)
            if "minimum" in field.metadata or "maximum" in field.metadata
        }
    return _limits_cache[cls]


def _out_of(
    limits: tuple[float | None, float | None], value: float, where: str
) -> Iterator[tuple[str, str]]:
    low, high = limits
    if (low is None or value >= low) and (high is None or value <= high):
        return
    if low is not None and high is not None:
        yield where, f"must be between {_show(low)} and {_show(high)}, not {_show(value)}"
    elif low is not None:
        yield where, f"must be at least {_show(low)}, not {_show(value)}"
    else:
        yield where, f"must be at most {_show(high)}, not {_show(value)}"


def _merge(*layers: dict[str, Any]) -> dict[str, Any]:
    """Later layers win, key by key; `params` and `env` merge their own keys too."""
    merged: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if key in ("params", "env"):
                # A fresh dict for each agent: agents must not share a mutable params.
                merged[key] = {**merged.get(key, {}), **value}
            else:
                merged[key] = value
    return merged


def _spec(agent_id: str, values: dict[str, Any], *, root: Path, digest: str) -> AgentSpec:
    kind: Kind = "in-process" if "entry" in values else "process"
    return AgentSpec(
        **{"id": agent_id, "kind": kind, "root": root, "cwd": root, "digest": digest, **values}
    )


# --- Folder agents --------------------------------------------------------------------


@attrs.frozen
class _Folder:
    path: Path
    values: dict[str, Any]  # the keys its agent.toml or agent.json gives, checked
    digest: str


def _folder(
    written: str, shown: str, *, where: str, label: str, base: Path, problems: _Problems
) -> _Folder | None:
    """Read the folder a `path` key names; None if it has problems (reported).

    `shown` is the folder as messages name it (and the files in it).
    """
    folder = _absolute(base, written)
    if not folder.is_dir():
        problem = "is not a folder" if folder.exists() else "does not exist"
        problems.add(label, f"{where}.path", f"{_show(written)} {problem}")
        return None
    found = [name for name in FOLDER_FILES if (folder / name).is_file()]
    has_main = (folder / "agent.py").is_file()
    if len(found) > 1:
        problems.add(
            label, f"{where}.path", f"{_show(written)} has both agent.toml and agent.json; keep one"
        )
        return None
    if not found and not has_main:
        problems.add(
            label, f"{where}.path", f"no agent.toml, agent.json or agent.py in {_show(written)}"
        )
        return None
    if not found:
        return _Folder(folder, {"entry": FOLDER_ENTRY}, folder_digest(folder))
    file_label = os.path.join(shown, found[0])
    values = _folder_keys(folder / found[0], file_label, where, has_main, problems)
    return None if values is None else _Folder(folder, values, folder_digest(folder))


def _folder_keys(
    file: Path, label: str, where: str, has_main: bool, problems: _Problems
) -> dict[str, Any] | None:
    """The agent keys in a folder's agent.toml or agent.json; they say the agent's kind."""
    try:
        text = _read_text(file, label)
        doc = _parse_json(text, label) if file.suffix == ".json" else _parse_toml(text, label)
    except ManifestError as e:
        problems.messages.extend(e.errors)
        return None
    values = _read_layer(doc, label=label, where=where, base=file.parent, problems=problems)
    if values is None:
        return None
    if "path" in values:
        problems.add(label, f"{where}.path", f"not allowed in {file.name}: the folder is the agent")
        return None
    given = [key for key in ("entry", "command") if key in values]
    if not given and has_main:
        values["entry"] = FOLDER_ENTRY
    elif len(given) != 1:
        message = _kinds_message(given, ("entry", "command"))
        problems.add(label, where, message + (" (or add an agent.py)" if not given else ""))
        return None
    return values


def _skipped_dir(name: str) -> bool:
    return name in ("__pycache__", ".git") or (name.startswith(".") and name.endswith("_cache"))


# --- after -----------------------------------------------------------------------------


def _check_after_ids(
    specs: Iterable[AgentSpec],
    known: Collection[str],
    label_of: Callable[[str], str],
    problems: _Problems,
) -> None:
    """Each id an agent's `after` names must be another agent's."""
    for spec in specs:
        where = f"agents.{_toml_key(spec.id)}.after"
        for other in spec.after:
            if other == spec.id:
                problems.add(label_of(spec.id), where, "an agent cannot come after itself")
            elif other not in known:
                hint = _did_you_mean(other, known)
                problems.add(label_of(spec.id), where, f"unknown agent {_show(other)}{hint}")


def _cycles(specs: Mapping[str, AgentSpec]) -> Iterator[list[str]]:
    """Each cycle in `after`, as ids from its first agent (in file order) back to it.

    Cycles that share an agent are found one at a time: fixing one reveals the next.
    """
    order = {agent_id: i for i, agent_id in enumerate(specs)}
    # Only agents with an `after` can be on a cycle: most of a large manifest has none,
    # and leaving them out keeps this O(agents with after).
    graph = {
        spec.id: [other for other in spec.after if other in specs and other != spec.id]
        for spec in specs.values()
        if spec.after
    }
    while True:
        try:
            graphlib.TopologicalSorter(graph).prepare()
            return
        except graphlib.CycleError as e:
            # graphlib lists each node before the ones that come after it; we name
            # the agents the other way round, along `after`.
            found: list[str] = list(reversed(e.args[1]))[:-1]
        start = min(range(len(found)), key=lambda i: order[found[i]])
        cycle = found[start:] + found[:start]
        yield [*cycle, cycle[0]]
        graph = {
            node: [o for o in deps if o not in cycle]
            for node, deps in graph.items()
            if node not in cycle
        }


# --- Values, paths, names ------------------------------------------------------------------


def _absolute(base: Path, written: str) -> Path:
    """`written` resolved against `base`, without following symlinks.

    Symlinks are kept as they are: a Kubernetes ConfigMap mounts files as symlinks that
    change on update, and the path must keep pointing through them.
    """
    return Path(os.path.normpath(os.path.join(base, written)))


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_key(key: str) -> str:
    """A key as TOML writes it in a dotted path: bare if it can be, else quoted."""
    return key if _BARE_KEY.match(key) else json.dumps(key, ensure_ascii=False)


def _join(where: str, key: str) -> str:
    return f"{where}.{_toml_key(key)}" if where else _toml_key(key)


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"; did you mean {_show(close[0])}?" if close else ""


def _show(value: Any) -> str:
    """A value as TOML would write it, short, for messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
        return text if len(text) <= 60 else text[:56] + '..."'
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list | tuple):
        return "an array"
    if value is None:
        return "null"
    return str(value)


def _plain(value: Any) -> Any:
    """`value` made of JSON and TOML types only: paths and dates as text, signals by name."""
    if isinstance(value, signal.Signals):
        return value.name
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if attrs.has(type(value)):
        return {
            field.name: _plain(getattr(value, field.name)) for field in attrs.fields(type(value))
        }
    return str(value)  # Path


_AGENT_KEYS = frozenset(field.name for field in attrs.fields(AgentKeys))
_SHARED_KEYS = [field.name for field in attrs.fields(AgentKeys) if field.name not in KIND_KEYS]


# --- The converter: types checked strictly -------------------------------------------
#
# cattrs alone is lenient where a manifest must not be: it would take "1.5" for a
# float, true for an int, and a string for an array of its characters. These hooks
# accept exactly the TOML/JSON types each field allows, and say what they expected.


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def _structure_scalar(cls: type) -> Callable[[Any, Any], Any]:
    name = _TYPE_NAMES[cls]

    def structure(value: Any, _: Any) -> Any:
        # bool is an int to Python, not to a user; an int is fine where a float is.
        ok = type(value) is cls or (cls is float and type(value) is int)
        if not ok:
            raise _Invalid(f"must be {name}, not {_show(value)}")
        if cls is float and not math.isfinite(value):
            raise _Invalid(f"must be a finite number, not {_show(value)}")
        return float(value) if cls is float else value

    return structure


def _structure_literal(value: Any, cls: Any) -> Any:
    choices = get_args(cls)
    if value not in choices or type(value) is not type(choices[0]):
        shown = ", ".join(_show(choice) for choice in choices)
        raise _Invalid(f"must be one of {shown}, not {_show(value)}")
    return value


_SIGNAL_NAMES = sorted(signal.Signals.__members__)


def _structure_signal(value: Any, _: Any) -> signal.Signals:
    if not isinstance(value, str):
        raise _Invalid(f'must be a signal name like "SIGTERM", not {_show(value)}')
    name = value if value.startswith("SIG") else f"SIG{value}"
    if name not in signal.Signals.__members__:
        raise _Invalid(f"unknown signal {_show(value)}{_did_you_mean(name, _SIGNAL_NAMES)}")
    return signal.Signals[name]


def _structure_path_or_none(value: Any, _: Any) -> Path | None:
    if not isinstance(value, str):
        raise _Invalid(f"must be a string, not {_show(value)}")
    return Path(value) if value else None


_COMMAND_TYPE = tuple[str, ...] | str | None


def _command_hook(_: Any, converter: cattrs.Converter) -> Callable[[Any, Any], Any]:
    words = converter.get_structure_hook(tuple[str, ...])

    def structure(value: Any, _: Any) -> tuple[str, ...] | None:
        if value is None:
            return None
        if isinstance(value, str):
            try:
                command = tuple(shlex.split(value))
            except ValueError as e:
                raise _Invalid(f"cannot split {_show(value)} like a shell: {e}")
        elif isinstance(value, list):
            command = words(value, tuple[str, ...])
        else:
            raise _Invalid(f"must be an array of strings or a string, not {_show(value)}")
        if not command or not command[0]:
            raise _Invalid("must not be empty")
        return command

    return structure


def _tuple_hook(cls: Any, converter: cattrs.Converter) -> Callable[[Any, Any], Any]:
    items = homogenous_tuple_structure_factory(cls, converter)

    def structure(value: Any, _: Any) -> Any:
        if not isinstance(value, list | tuple):
            raise _Invalid(f"must be an array, not {_show(value)}")
        return items(value, cls)

    return structure


def _dict_hook(cls: Any, converter: cattrs.Converter) -> Callable[[Any, Any], Any]:
    items = make_mapping_structure_fn(cls, converter)

    def structure(value: Any, _: Any) -> Any:
        if not isinstance(value, dict):
            raise _Invalid(f"must be a table, not {_show(value)}")
        return items(value, cls)

    return structure


def _class_hook(cls: Any, converter: cattrs.Converter) -> Callable[[Any, Any], Any]:
    make = make_dict_structure_fn(
        cls, converter, _cattrs_forbid_extra_keys=True, _cattrs_detailed_validation=True
    )

    def structure(value: Any, _: Any) -> Any:
        if not isinstance(value, dict):
            raise _Invalid(f"must be a table, not {_show(value)}")
        # `x-` keys are the tools' own, at every level: not ours to check or keep.
        return make({key: item for key, item in value.items() if not key.startswith("x-")}, cls)

    return structure


def _optional_hook(cls: Any, converter: cattrs.Converter) -> Callable[[Any, Any], Any]:
    # cattrs looks the inner hook up on every call; 10,000 agents notice.
    (inner,) = [arg for arg in get_args(cls) if arg is not type(None)]
    structure = converter.get_structure_hook(inner)
    return lambda value, _: None if value is None else structure(value, inner)


def _is_optional(cls: Any) -> bool:
    args = get_args(cls)
    return get_origin(cls) in (Union, types.UnionType) and len(args) == 2 and type(None) in args


def _is_optional_path(cls: Any) -> bool:
    return bool(cls == Path | None)


def _is_literal(cls: Any) -> bool:
    return get_origin(cls) is Literal


def _is_tuple(cls: Any) -> bool:
    return get_origin(cls) is tuple


def _is_dict(cls: Any) -> bool:
    return get_origin(cls) is dict


def _is_command(cls: Any) -> bool:
    return bool(cls == _COMMAND_TYPE)


def _make_converter() -> cattrs.Converter:
    """The one converter, built once at import; cattrs generates a function per model.

    Hooks registered later win: the specific ones come last.
    """
    converter = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    for cls in (str, int, float, bool):
        converter.register_structure_hook(cls, _structure_scalar(cls))
    converter.register_structure_hook(signal.Signals, _structure_signal)
    converter.register_structure_hook_func(_is_literal, _structure_literal)
    converter.register_structure_hook_factory(_is_tuple, _tuple_hook)
    converter.register_structure_hook_factory(_is_dict, _dict_hook)
    converter.register_structure_hook_factory(attrs.has, _class_hook)
    converter.register_structure_hook_factory(_is_optional, _optional_hook)
    converter.register_structure_hook_func(_is_optional_path, _structure_path_or_none)
    converter.register_structure_hook_factory(_is_command, _command_hook)
    return converter


_converter = _make_converter()


# --- JSON Schema ------------------------------------------------------------------------

# JSON Schema applies every matching patternProperties entry: keep `x-` keys out of ids.
# (Without a lookahead, which not every editor's regex engine has.)
_SCHEMA_ID_PATTERN = r"^([a-wyz0-9][a-z0-9_.-]{0,62}|x|x[a-z0-9_.][a-z0-9_.-]{0,61})$"


def _closed(properties: dict[str, Any]) -> dict[str, Any]:
    """An object schema with these properties, `x-` keys, and nothing else."""
    return {
        "type": "object",
        "properties": properties,
        "patternProperties": {"^x-": {}},
        "additionalProperties": False,
    }


def _object_schema(
    cls: type, *, defaults_from: type, description: str, omit: Collection[str] = ()
) -> dict[str, Any]:
    """The schema of an attrs model's table: each field's type, meaning and default."""
    defaults = attrs.fields_dict(defaults_from)
    properties = {}
    for field in attrs.fields(cls):
        if field.name in omit:
            continue
        schema = _type_schema(field.type)
        _add_rules(schema, field.metadata)
        schema["description"] = field.metadata["doc"]
        default: Any = defaults[field.name].default if field.name in defaults else None
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            default = default.factory()
        if default is not None and default is not attrs.NOTHING:
            schema["default"] = _plain(default)
        elif field.type == Path | None:
            schema["default"] = ""  # what a user writes for "none"
        properties[field.name] = schema
    return {"description": description, **_closed(properties)}


def _add_rules(schema: dict[str, Any], rules: Mapping[str, Any]) -> None:
    """Add a field's metadata rules (see `_doc`) to its schema, in place."""
    limits = {key: rules[key] for key in ("minimum", "maximum") if key in rules}
    for member in schema.get("anyOf", [schema]):
        if member.get("type") == "array":
            member["items"].update(limits)
            member.update({"minItems": 1} if rules.get("non_empty") else {})
        elif member.get("type") == "string":
            member.update({"pattern": rules["pattern"]} if "pattern" in rules else {})
            member.update({"minLength": 1} if rules.get("non_empty") else {})
        else:
            member.update(limits)


def _type_schema(cls: Any) -> dict[str, Any]:
    """The JSON Schema of one field type (None, "not given", has no schema of its own)."""
    simple = {str: "string", int: "integer", float: "number", bool: "boolean", Path: "string"}
    origin, args = get_origin(cls), get_args(cls)
    if cls in simple:
        return {"type": simple[cls]}
    if cls is Any:
        return {}
    if cls is signal.Signals:
        short = [name.removeprefix("SIG") for name in _SIGNAL_NAMES]
        return {"type": "string", "enum": _SIGNAL_NAMES + short}
    if attrs.has(cls):
        return {"$ref": f"#/$defs/{cls.__name__.lower()}"}
    if origin is Literal:
        return {"type": "string", "enum": list(args)}
    if origin is tuple:
        return {"type": "array", "items": _type_schema(args[0])}
    if origin is dict:
        values = _type_schema(args[1])
        return {"type": "object", **({"additionalProperties": values} if values else {})}
    if origin in (Union, types.UnionType):
        members = [_type_schema(arg) for arg in args if arg is not type(None)]
        return members[0] if len(members) == 1 else {"anyOf": members}
    raise TypeError(f"no JSON Schema for {cls!r}")
