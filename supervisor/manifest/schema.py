"""The manifest's JSON Schema, generated from the attrs models and their metadata.

Editors' TOML plugins use it to complete keys, show their meaning and default, and flag
typos; CI can check a manifest with it. Descriptions, limits and patterns come from each
field's metadata, the same the loader checks against.
"""

from __future__ import annotations

import signal
import types
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import attrs

from supervisor.manifest.convert import SIGNAL_NAMES, plain
from supervisor.manifest.keys import AgentKeys, Document
from supervisor.manifest.model import (
    KIND_KEYS,
    AgentSpec,
    Backoff,
    Probe,
    ReadyProbe,
    Settings,
)

# JSON Schema applies every matching patternProperties entry: keep `x-` keys out of ids.
# (Without a lookahead, which not every editor's regex engine has.)
_SCHEMA_ID_PATTERN = r"^([a-wyz0-9][a-z0-9_.-]{0,62}|x|x[a-z0-9_.][a-z0-9_.-]{0,61})$"


def json_schema() -> dict[str, Any]:
    """The manifest's JSON Schema (draft 2020-12), generated from the attrs models.

    Editors' TOML plugins use it to complete keys, show their meaning and default, and
    flag typos; CI can check a manifest with it. It checks what a schema can: names,
    types, enums, limits, exactly one kind. `supervisor check` checks everything.
    """
    for cls in (Backoff, Probe, ReadyProbe, Settings, AgentSpec, AgentKeys, Document):
        attrs.resolve_types(cls)
    agent = _object_schema(
        AgentKeys,
        defaults_from=AgentSpec,
        description='an agent: exactly one of "entry", "command" or "path", and its other keys',
    )
    agent["oneOf"] = [{"required": [key]} for key in KIND_KEYS]
    doc = {field.name: field.metadata["doc"] for field in attrs.fields(Document)}
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
            "probe": _probe_schema(Probe, attrs.fields(AgentKeys).liveness.metadata["doc"]),
            "readyprobe": _probe_schema(
                ReadyProbe, "a readiness probe: the agent is running once it first passes"
            ),
        },
    }


def _probe_schema(cls: type, description: str) -> dict[str, Any]:
    """A probe table: its keys, with exactly one kind of check."""
    schema = _object_schema(cls, defaults_from=cls, description=description)
    kinds = [name for name in ("http", "tcp", "exec", "log") if name in schema["properties"]]
    schema["oneOf"] = [{"required": [kind]} for kind in kinds]
    return schema


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
            schema["default"] = plain(default)
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
        short = [name.removeprefix("SIG") for name in SIGNAL_NAMES]
        return {"type": "string", "enum": SIGNAL_NAMES + short}
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
