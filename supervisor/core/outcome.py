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
    # The start failed for want of the supervisor's resources (EMFILE, ENFILE), not for
    # anything the agent did: retried without spending its restart budget.
    short_of_resources: bool = False
    killed: bool = False  # a stop needed SIGKILL: stop_timeout passed first


@attrs.frozen
class ExitRecord:
    """How one run ended, as kept in a slot's history; `at` is trio time."""

    at: float
    code: int | None = None
    signal: int | None = None
    error: str | None = None
    stopped: bool = False  # the run ended by a stop (request, reload, shutdown, fence)
    killed: bool = False  # ... and needed SIGKILL after stop_timeout

    @classmethod
    def of(cls, outcome: Outcome, at: float, *, stopped: bool = False) -> ExitRecord:
        return cls(at, outcome.code, outcome.signal, outcome.error, stopped, outcome.killed)


def describe_exception(exc: BaseException) -> str:
    """``"ValueError: boom"``, or only the type's name when the text is empty."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# The module whose SIGINT handler raises KeyboardInterrupt (a test holds it to trio's).
_TRIO_KI_MODULE = "trio._core._ki"


def is_signal_interrupt(exc: BaseException) -> bool:
    """Whether `exc` is or holds a ``KeyboardInterrupt`` that trio raised for a SIGINT.

    trio's SIGINT handler raises it in whatever code was running, an in-process agent's
    too; an agent's own ``raise KeyboardInterrupt`` is told apart by where it was raised:
    its innermost frame is the agent's, not trio's handler's.
    """
    if isinstance(exc, BaseExceptionGroup):
        return any(is_signal_interrupt(inner) for inner in exc.exceptions)
    if not isinstance(exc, KeyboardInterrupt):
        return False
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_globals.get("__name__") == _TRIO_KI_MODULE
