"""The one cattrs converter that turns raw TOML into the manifest's models, strictly.

cattrs alone is lenient where a manifest must not be: it would take "1.5" for a float,
true for an int, and a string for an array of its characters. The hooks here accept
exactly the TOML/JSON types each field allows, and say what they expected, in an
`Invalid` that cattrs gathers, with the failing value's path, into its error groups
(`check.Problems` turns those into located messages).

`keys_given` is the fast way for a large manifest's agents: the same hooks, into a
plain dict of the keys a table gives, with no model instance and no error located.

`plain` goes the other way: a resolved value back to JSON and TOML types.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import types
from collections.abc import Callable, Iterable
from pathlib import Path, PurePath
from typing import Any, Literal, TypedDict, Union, get_args, get_origin

import attrs
import cattrs
from cattrs.cols import homogenous_tuple_structure_factory
from cattrs.gen import make_dict_structure_fn, make_mapping_structure_fn
from cattrs.gen.typeddicts import make_dict_structure_fn as make_typeddict_structure_fn

from supervisor.manifest.model import ReadyMode, ReadyProbe


class Invalid(ValueError):
    """A value is wrong; the message says how, for a user, and cattrs locates it."""


# --- Values in messages ---------------------------------------------------------------


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """A hint naming the choice closest to `word`, or "" if none is close."""
    import difflib  # here: only a manifest with a mistake needs it

    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"; did you mean {show(close[0])}?" if close else ""


def show(value: Any) -> str:
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


_AS_IS = frozenset({str, bool, int, float, type(None)})  # exactly these types (not enums)
_FIELDS: dict[type, tuple[str, ...]] = {}  # an attrs class's field names, looked up once


def plain(value: Any) -> Any:
    """`value` made of JSON and TOML types only: paths and dates as text, signals by name.

    The common cases are checked by exact type first: ``GET /agents`` renders every
    agent's spec through it (docs/performance.md)."""
    kind = type(value)
    if kind in _AS_IS:
        return value
    if kind is dict:
        return {str(key): plain(item) for key, item in value.items()}
    if kind is tuple or kind is list:
        return [plain(item) for item in value]
    names = _FIELDS.get(kind)
    if names is not None:
        return {name: plain(item) for name in names if (item := getattr(value, name)) is not None}
    if isinstance(value, signal.Signals):
        return value.name
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, PurePath):
        return str(value)
    if _is_datetime(value):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    if attrs.has(kind):  # a key left out (None: a probe's other kinds) stays out
        _FIELDS[kind] = tuple(field.name for field in attrs.fields(kind))
        return plain(value)
    return str(value)


def _is_datetime(value: Any) -> bool:
    """A TOML date, time or date-time (made by the datetime module: loaded if there is one)."""
    module = sys.modules.get("datetime")
    if module is None:
        return False
    names = vars(module)  # not getattr: it would import a lazy one (supervisor.lazyimports)
    return isinstance(
        value, tuple(names[name] for name in ("datetime", "date", "time") if name in names)
    )


# --- The hooks: types checked strictly ------------------------------------------------


_TYPE_NAMES = {str: "a string", int: "an integer", bool: "true or false"}


def _structure_scalar(cls: type) -> Callable[[Any, Any], Any]:
    name = _TYPE_NAMES[cls]

    def structure(value: Any, _: Any) -> Any:
        # bool is an int to Python, not to a user: the type must be exactly `cls`.
        if type(value) is not cls:
            raise Invalid(f"must be {name}, not {show(value)}")
        return value

    return structure


def _structure_float(value: Any, _: Any) -> float:
    # An int is fine where a float is (TOML writes 10 for 10.0); a bool is not.
    if type(value) is not float and type(value) is not int:
        raise Invalid(f"must be a number, not {show(value)}")
    if not math.isfinite(value):
        raise Invalid(f"must be a finite number, not {show(value)}")
    return float(value)


def _literal_hook(cls: Any) -> Callable[[Any, Any], Any]:
    choices = get_args(cls)
    kind = type(choices[0])

    def structure(value: Any, _: Any) -> Any:
        if type(value) is not kind or value not in choices:
            shown = ", ".join(show(choice) for choice in choices)
            raise Invalid(f"must be one of {shown}, not {show(value)}")
        return value

    return structure


SIGNAL_NAMES = sorted(signal.Signals.__members__)


def _structure_signal(value: Any, _: Any) -> signal.Signals:
    if not isinstance(value, str):
        raise Invalid(f'must be a signal name like "SIGTERM", not {show(value)}')
    name = value if value.startswith("SIG") else f"SIG{value}"
    if name not in signal.Signals.__members__:
        raise Invalid(f"unknown signal {show(value)}{did_you_mean(name, SIGNAL_NAMES)}")
    return signal.Signals[name]


def _structure_path_or_none(value: Any, _: Any) -> Path | None:
    if not isinstance(value, str):
        raise Invalid(f"must be a string, not {show(value)}")
    return Path(value) if value else None


_COMMAND_TYPE = tuple[str, ...] | str | None


def _command_hook(_: Any, converter: cattrs.Converter) -> Callable[[Any, Any], Any]:
    words = converter.get_structure_hook(tuple[str, ...])

    def structure(value: Any, _: Any) -> tuple[str, ...] | None:
        if value is None:
            return None
        if isinstance(value, str):
            import shlex  # here: most commands are arrays

            try:
                command = tuple(shlex.split(value))
            except ValueError as e:
                raise Invalid(f"cannot split {show(value)} like a shell: {e}")
        elif isinstance(value, list):
            command = words(value, tuple[str, ...])
        else:
            raise Invalid(f"must be an array of strings or a string, not {show(value)}")
        if not command or not command[0]:
            raise Invalid("must not be empty")
        return command

    return structure


def _tuple_hook(cls: Any, converter: cattrs.Converter) -> Callable[[Any, Any], Any]:
    items = homogenous_tuple_structure_factory(cls, converter)

    def structure(value: Any, _: Any) -> Any:
        if not isinstance(value, list | tuple):
            raise Invalid(f"must be an array, not {show(value)}")
        return items(value, cls)

    return structure


def _dict_hook(cls: Any, converter: cattrs.Converter) -> Callable[[Any, Any], Any]:
    items = make_mapping_structure_fn(cls, converter)

    def structure(value: Any, _: Any) -> Any:
        if not isinstance(value, dict):
            raise Invalid(f"must be a table, not {show(value)}")
        return items(value, cls)

    return structure


def _class_hook(cls: Any, converter: cattrs.Converter) -> Callable[[Any, Any], Any]:
    make = make_dict_structure_fn(
        cls, converter, _cattrs_forbid_extra_keys=True, _cattrs_detailed_validation=True
    )

    known = frozenset(field.name for field in attrs.fields(cls))

    def structure(value: Any, _: Any) -> Any:
        if not isinstance(value, dict):
            raise Invalid(f"must be a table, not {show(value)}")
        return make(_without_tool_keys(value, known), cls)

    return structure


def _without_tool_keys(table: dict[str, Any], known: frozenset[str]) -> dict[str, Any]:
    """`table` without `x-` keys: they are the tools' own, at every level, not ours."""
    if table.keys() <= known:  # most tables: no copy (10,000 agents notice)
        return table
    return {key: item for key, item in table.items() if not key.startswith("x-")}


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


_READY_TYPE = ReadyMode | ReadyProbe | None


def _is_ready(cls: Any) -> bool:
    return bool(cls == _READY_TYPE)


def _ready_hook(_: Any, converter: cattrs.Converter) -> Callable[[Any, Any], Any]:
    """`ready`: "immediate", "notify", or a probe table."""
    mode = converter.get_structure_hook(ReadyMode)
    probe = converter.get_structure_hook(ReadyProbe)

    def structure(value: Any, _: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, dict):
            return probe(value, ReadyProbe)
        if isinstance(value, str):
            return mode(value, ReadyMode)
        raise Invalid(f'must be "immediate", "notify" or a probe table, not {show(value)}')

    return structure


def _make_converter() -> cattrs.Converter:
    """The one converter, built once at import; cattrs generates a function per model.

    Hooks registered later win: the specific ones come last.
    """
    converter = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    for cls in (str, int, bool):
        converter.register_structure_hook(cls, _structure_scalar(cls))
    converter.register_structure_hook(float, _structure_float)
    converter.register_structure_hook(signal.Signals, _structure_signal)
    converter.register_structure_hook_factory(_is_literal, _literal_hook)
    converter.register_structure_hook_factory(_is_tuple, _tuple_hook)
    converter.register_structure_hook_factory(_is_dict, _dict_hook)
    converter.register_structure_hook_factory(attrs.has, _class_hook)
    converter.register_structure_hook_factory(_is_optional, _optional_hook)
    converter.register_structure_hook_func(_is_optional_path, _structure_path_or_none)
    converter.register_structure_hook_factory(_is_command, _command_hook)
    converter.register_structure_hook_factory(_is_ready, _ready_hook)
    return converter


converter = _make_converter()


def keys_given(cls: type) -> Callable[[Any], dict[str, Any]]:
    """A fast way to structure a table of `cls`'s keys: into a dict of the keys given.

    Each value is structured by the converter's hook for its field, as when
    structuring into `cls`, but no instance is made and no error is located: any
    problem raises, and the caller then structures into `cls` to report where. A
    large manifest's agents go this way, and most have no problem.
    """
    attrs.resolve_types(cls)
    fields = {field.name: field.type for field in attrs.fields(cls)}
    # The same keys as a TypedDict, which cattrs structures into a plain dict.
    table_type: Any = TypedDict(f"{cls.__name__}Table", fields, total=False)  # type: ignore[misc]
    make = make_typeddict_structure_fn(
        table_type, converter, _cattrs_forbid_extra_keys=True, _cattrs_detailed_validation=False
    )
    known = frozenset(fields)

    def structure(table: Any) -> dict[str, Any]:
        if not isinstance(table, dict):
            raise Invalid("not a table")
        given: dict[str, Any] = make(_without_tool_keys(table, known), table_type)
        return given

    return structure
