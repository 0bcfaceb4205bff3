"""Problems: every error in a manifest, located, collected, and raised at once.

`Problems` gathers ``FILE: PATH: message`` lines while a manifest is read; structuring
through it turns cattrs' error groups into such lines. The rest are the rules the types
alone do not say, checked on structured values: limits from the fields' metadata,
entries, env names, nulls, ids, one kind per agent. Files are read by
`supervisor.manifest.files` (regular files only, bounded), parsed here.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, get_args

import attrs
import rtoml
from attrs import AttrsInstance
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError

from supervisor.manifest.accounts import account_problems
from supervisor.manifest.convert import Invalid, converter, did_you_mean, keys_given, show
from supervisor.manifest.keys import AgentKeys
from supervisor.manifest.model import (
    ENTRY_PATTERN,
    ID_PATTERN,
    ManifestError,
    Probe,
    ReadyProbe,
)

T = TypeVar("T")
A = TypeVar("A", bound=AttrsInstance)


@attrs.define
class Problems:
    """Collects located messages, so that one run reports every problem."""

    messages: list[str] = attrs.Factory(list)

    def add(self, label: str, where: str, message: str) -> None:
        self.messages.append(f"{label}: {where}: {message}" if where else f"{label}: {message}")

    def add_all(self, label: str, pairs: Iterable[tuple[str, str]]) -> None:
        for where, message in pairs:
            self.add(label, where, message)

    def structure(self, cls: type[T], table: Any, label: str, where: str) -> T | None:
        """`table` structured into `cls`, after reporting any problems.

        If some keys are bad, the others are still structured (so that the checks that
        follow still run on them and report what they find too); None if that fails.
        """
        try:
            return converter.structure(table, cls)
        except Exception as e:
            self.add_all(label, _located(e, where))
            bad = _bad_keys(e)
        if not bad or not isinstance(table, dict):
            return None
        try:
            return converter.structure({k: v for k, v in table.items() if k not in bad}, cls)
        except Exception:
            return None

    def raise_if_any(self) -> None:
        if self.messages:
            raise ManifestError(self.messages)


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
                    if sub.cl is Probe and key == "log":
                        yield _join(where, key), "a log probe can only be a ready probe"
                        continue
                    yield _join(where, key), "unknown key" + did_you_mean(key, known)
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
    elif isinstance(exc, Invalid):
        yield where, str(exc)
    else:  # a bug of ours rather than the user's; still say where
        yield where, f"invalid value ({type(exc).__name__}: {exc})"


# --- Paths and names --------------------------------------------------------------------


@functools.lru_cache(maxsize=1024)
def absolute(base: Path, written: str) -> Path:
    """`written` resolved against `base`, without following symlinks.

    Symlinks are kept as they are: a Kubernetes ConfigMap mounts files as symlinks that
    change on update, and the path must keep pointing through them.

    Agents that give the same `cwd` get the same Path object, from one load to the
    next too: it is made once, and specs compare faster on reload.
    """
    return Path(os.path.normpath(os.path.join(base, written)))


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def toml_key(key: str) -> str:
    """A key as TOML writes it in a dotted path: bare if it can be, else quoted."""
    return key if _BARE_KEY.match(key) else json.dumps(key, ensure_ascii=False)


def _join(where: str, key: str) -> str:
    return f"{where}.{toml_key(key)}" if where else toml_key(key)


# --- Reading files -----------------------------------------------------------------


_TOML_POSITION = re.compile(r"^(?P<msg>.*) at line (?P<line>\d+) column (?P<column>\d+)$", re.S)


def parse_toml(text: str, label: str) -> dict[str, Any]:
    """Parse TOML; ManifestError, with the line and column, if it is not valid."""
    try:
        return dict(rtoml.loads(text))
    except rtoml.TomlParsingError as e:
        found = _TOML_POSITION.match(str(e))
        if found is None:
            raise ManifestError([f"{label}: invalid TOML: {e}"])
        line, column, msg = found["line"], found["column"], found["msg"]
        raise ManifestError([f"{label}: line {line}, column {column}: invalid TOML: {msg}"])


def parse_json(text: str, label: str) -> dict[str, Any]:
    """Parse a folder's agent.json; ManifestError if it is not a JSON object."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise ManifestError([f"{label}: line {e.lineno}, column {e.colno}: invalid JSON: {e.msg}"])
    if not isinstance(doc, dict):
        raise ManifestError([f"{label}: must hold an object of agent keys, not {show(doc)}"])
    return doc


def file_tables(cls: type[A], doc: dict[str, Any], label: str, problems: Problems) -> A:
    """The top-level tables of a file; a table that is not a table is left out."""
    tables = problems.structure(cls, doc, label, "")
    if tables is not None:
        return tables
    names = [field.name for field in attrs.fields(cls)]
    return cls(**{name: doc[name] for name in names if isinstance(doc.get(name), dict)})


# --- Rules on structured values -------------------------------------------------------
#
# A large manifest has thousands of agents, and most have no problem: the checks below
# test values first and build a message, and the TOML path it names, only for a
# problem. That path is given as a `Where`, called only then.

Where = Callable[[], str]


def agent_where(agent_id: str) -> str:
    """The TOML path of an agent's table: ``agents.web``, ``agents."api.v2"``."""
    return f"agents.{toml_key(agent_id)}"


_ID = re.compile(ID_PATTERN)


def check_id(agent_id: str, label: str, problems: Problems, hint: str = "") -> None:
    """An id must match ID_PATTERN, and not start with "x-"; `hint` ends the message."""
    if agent_id.startswith("x-"):
        message = 'bad id: ids starting with "x-" are kept for tools'
    elif not _ID.match(agent_id):
        message = (
            'bad id: use 1 to 63 of a-z, 0-9, "_", "." and "-", starting with a letter or digit'
        )
    else:
        return
    problems.add(label, agent_where(agent_id), message + hint)


def kinds_message(given: Sequence[str], allowed: Sequence[str]) -> str:
    """What is wrong when a table gives `given` of the kind keys, not one of `allowed`."""
    choices = ", ".join(f'"{key}"' for key in allowed[:-1]) + f' or "{allowed[-1]}"'
    if not given:
        return f"needs one of {choices}"
    shown = ", ".join(f'"{key}"' for key in given[:-1]) + f' and "{given[-1]}"'
    return f"has {shown}; give exactly one of {choices}"


_AGENT_KEYS = frozenset(field.name for field in attrs.fields(AgentKeys))
_agent_keys_given = keys_given(AgentKeys)


def read_layer(
    table: Any, *, label: str, where: Where, base: Path, problems: Problems
) -> dict[str, Any] | None:
    """The keys `table` gives, checked, with `cwd` made absolute against `base`.

    None if the table cannot be structured; its problems are reported either way.
    """
    try:
        given = _agent_keys_given(table)
    except Exception:
        # Again, into the model, to report every problem where it is and keep the good
        # keys: twice the work, only for a table that has a problem.
        keys = problems.structure(AgentKeys, table, label, where())
        if keys is None:
            return None
        given = {key: getattr(keys, key) for key in table if key in _AGENT_KEYS}
    # Only the keys given here, in their order: they decide what this layer overrides.
    # (A JSON null is taken as "not given".) `x-` keys were dropped while structuring.
    values = {key: value for key in table if (value := given.get(key)) is not None}
    found = limit_problems(AgentKeys, values, where) + _value_problems(values, where)
    if found:
        problems.add_all(label, found)
    if "cwd" in values:
        values["cwd"] = absolute(base, values["cwd"])
    return values


_ENTRY = re.compile(ENTRY_PATTERN)


def _value_problems(values: dict[str, Any], where: Where) -> list[tuple[str, str]]:
    """What the types alone do not say about an agent's values."""
    found = []
    entry = values.get("entry")
    if entry is not None and not _ENTRY.match(entry):
        message = f'must be "module:function", like "app.worker:main", not {show(entry)}'
        found.append((f"{where()}.entry", message))
    for name in values.get("env", ()):
        if not name or "=" in name or "\0" in name:
            found.append((_join(f"{where()}.env", name), 'must be a variable name, without "="'))
    # TOML has no null: a params table from JSON with one could not be kept in a
    # state file, nor written in a manifest.
    params = values.get("params")
    if params and _has_null(params):
        for path in null_paths(params, f"{where()}.params"):
            found.append((path, "must not be null (TOML has no null; leave the key out)"))
    if values.get("path") == "":
        found.append((f"{where()}.path", "must not be empty"))
    for key in ("liveness", "ready"):
        probe = values.get(key)
        if isinstance(probe, Probe):
            found += _probe_problems(probe, functools.partial(_child, where, key))
    found += account_problems(values, where)
    return found


def _probe_problems(probe: Probe, where: Where) -> list[tuple[str, str]]:
    """A probe gives exactly one kind of check, and a value that kind can use."""
    kinds = (
        ("http", "tcp", "exec", "log") if isinstance(probe, ReadyProbe) else ("http", "tcp", "exec")
    )
    given = [kind for kind in kinds if getattr(probe, kind) is not None]
    if len(given) != 1:
        return [(where(), kinds_message(given, kinds))]
    if probe.http is not None:
        import urllib.parse  # here: most manifests have no http probe

        url = urllib.parse.urlsplit(probe.http)
        if url.scheme not in ("http", "https") or not url.hostname:
            message = f'must be an "http://" or "https://" URL with a host, not {show(probe.http)}'
            return [(f"{where()}.http", message)]
    if probe.tcp is not None:
        host, _, port = probe.tcp.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) <= 65535:
            return [(f"{where()}.tcp", f'must be "HOST:PORT", not {show(probe.tcp)}')]
    if isinstance(probe, ReadyProbe) and probe.log is not None:
        try:
            re.compile(probe.log)
        except re.error as e:
            return [(f"{where()}.log", f"not a regular expression: {e}")]
    return []


def _has_null(value: Any) -> bool:
    """Whether `value` is or holds a null; `null_paths` then says where."""
    if isinstance(value, dict):
        items: Iterable[Any] = value.values()
    elif isinstance(value, list):
        items = value
    else:
        return value is None
    # A loop, not any(): no generator made for each agent's params.
    for item in items:  # noqa: SIM110
        if item is None or (isinstance(item, dict | list) and _has_null(item)):
            return True
    return False


def null_paths(value: Any, where: str) -> Iterator[str]:
    """The paths of the nulls inside `value`."""
    if value is None:
        yield where
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from null_paths(item, _join(where, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from null_paths(item, f"{where}[{i}]")


Limits = tuple[float | None, float | None]


def limit_problems(cls: type, values: Mapping[str, Any], where: Where) -> list[tuple[str, str]]:
    """Values outside the `minimum`/`maximum` in their field's metadata (items of arrays).

    A value that is itself a table (`backoff`) is checked against its own fields'.
    """
    rules = _rules(cls)
    found: list[tuple[str, str]] = []
    if rules.keys().isdisjoint(values):  # most tables give no key with limits
        return found
    for name, value in values.items():
        rule = rules.get(name)
        if rule is None:
            continue
        if isinstance(rule, type):
            if not isinstance(value, rule):  # ready = "notify": not a probe table
                continue
            nested = {field.name: getattr(value, field.name) for field in attrs.fields(rule)}
            found += limit_problems(rule, nested, functools.partial(_child, where, name))
        elif isinstance(value, tuple):
            for i, item in enumerate(value):
                if (message := _out_of(rule, item)) is not None:
                    found.append((f"{where()}.{name}[{i}]", message))
        elif (message := _out_of(rule, value)) is not None:
            found.append((f"{where()}.{name}", message))
    return found


def _child(where: Where, name: str) -> str:
    return f"{where()}.{name}"


@functools.cache
def _rules(cls: type) -> dict[str, Limits | type]:
    """The fields of `cls` that have limits, or are attrs models with fields that may."""
    attrs.resolve_types(cls)
    rules: dict[str, Limits | type] = {}
    for field in attrs.fields(cls):
        nested = [t for t in (field.type, *get_args(field.type)) if attrs.has(t)]
        if nested:
            rules[field.name] = nested[0]
        elif "minimum" in field.metadata or "maximum" in field.metadata:
            rules[field.name] = (field.metadata.get("minimum"), field.metadata.get("maximum"))
    return rules


def _out_of(limits: Limits, value: float) -> str | None:
    """What is wrong with `value` if it is out of `limits`, else None."""
    low, high = limits
    if (low is None or value >= low) and (high is None or value <= high):
        return None
    if low is not None and high is not None:
        return f"must be between {show(low)} and {show(high)}, not {show(value)}"
    if low is not None:
        return f"must be at least {show(low)}, not {show(value)}"
    return f"must be at most {show(high)}, not {show(value)}"
