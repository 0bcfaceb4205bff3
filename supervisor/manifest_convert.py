"""The one cattrs converter that turns raw TOML into the manifest's models, strictly.

cattrs alone is lenient where a manifest must not be: it would take "1.5" for a float,
true for an int, and a string for an array of its characters. The hooks here accept
exactly the TOML/JSON types each field allows, and say what they expected, in an
`Invalid` that cattrs gathers, with the failing value's path, into its error groups
(`manifest_check.Problems` turns those into located messages).

`plain` goes the other way: a resolved value back to JSON and TOML types.
"""

from __future__ import annotations

import difflib
import json
import math
import shlex
import signal
import types
from collections.abc import Callable, Iterable
from datetime import date, datetime, time
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import attrs
import cattrs
from cattrs.cols import homogenous_tuple_structure_factory
from cattrs.gen import make_dict_structure_fn, make_mapping_structure_fn


class Invalid(ValueError):
    """A value is wrong; the message says how, for a user, and cattrs locates it."""


# --- Values in messages ---------------------------------------------------------------


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """A hint naming the choice closest to `word`, or "" if none is close."""
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


def plain(value: Any) -> Any:
    """`value` made of JSON and TOML types only: paths and dates as text, signals by name."""
    if isinstance(value, signal.Signals):
        return value.name
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    if attrs.has(type(value)):
        return {
            field.name: plain(getattr(value, field.name)) for field in attrs.fields(type(value))
        }
    return str(value)  # Path


# --- The hooks: types checked strictly ------------------------------------------------


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def _structure_scalar(cls: type) -> Callable[[Any, Any], Any]:
    name = _TYPE_NAMES[cls]

    def structure(value: Any, _: Any) -> Any:
        # bool is an int to Python, not to a user; an int is fine where a float is.
        ok = type(value) is cls or (cls is float and type(value) is int)
        if not ok:
            raise Invalid(f"must be {name}, not {show(value)}")
        if cls is float and not math.isfinite(value):
            raise Invalid(f"must be a finite number, not {show(value)}")
        return float(value) if cls is float else value

    return structure


def _structure_literal(value: Any, cls: Any) -> Any:
    choices = get_args(cls)
    if value not in choices or type(value) is not type(choices[0]):
        shown = ", ".join(show(choice) for choice in choices)
        raise Invalid(f"must be one of {shown}, not {show(value)}")
    return value


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

    def structure(value: Any, _: Any) -> Any:
        if not isinstance(value, dict):
            raise Invalid(f"must be a table, not {show(value)}")
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


converter = _make_converter()
