"""How one run of an agent ended: what a runner reports and what a slot keeps. Pure."""

from __future__ import annotations

import attrs


@attrs.frozen(kw_only=True)
class Outcome:
    """How one run of an agent ended, as its runner saw it."""

    code: int | None = None  # exit code; 0 for an async function that returned
    signal: int | None = None  # the signal that killed the process
    error: str | None = None  # exception text, or why the start failed
    start_failed: bool = False  # the agent could not be started at all


@attrs.frozen
class ExitRecord:
    """How one run ended, as kept in a slot's history; `at` is trio time."""

    at: float
    code: int | None = None
    signal: int | None = None
    error: str | None = None


def describe_exception(exc: BaseException) -> str:
    """``"ValueError: boom"``, or only the type's name when the text is empty."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
