"""In-process agents: an async function run in the supervisor's own trio loop.

`run_inprocess` keeps the runner contract of `supervisor.runners` for agents whose spec
has an ``entry``. One call is one start of the agent:

1. **Load.** `load_entry` imports the entry (``"pkg.mod:func"`` or ``"pkg.mod:obj.attr"``)
   with the agent's `root` first on the import path. A folder agent's code is imported
   fresh on every start (see *Agent folders* below). Anything that stops the entry from
   loading is a start that cannot succeed: an `Outcome` with ``start_failed=True`` and a
   message a user can act on, never an exception.
2. **Run.** The entry is called with a new `AgentContext`. Returning is exit code 0,
   ``SystemExit(n)`` is exit code n, any other exception is a failure described as
   ``"ValueError: boom"``; the traceback is logged under the agent's name. That holds for
   every `BaseException` the agent raises, ``KeyboardInterrupt`` and ``GeneratorExit``
   and exception groups of them included: an agent cannot end the supervisor. Only the
   supervisor's own cancellation (a stop) propagates, and a ``KeyboardInterrupt`` that
   trio raised for a real SIGINT (`is_signal_interrupt`: the supervisor's signal task
   normally takes SIGINT first, as a graceful stop).
3. **Stop.** A stop is the cancellation of `run_inprocess` (the slot cancels the scope
   around it). It has two phases: first ``ctx.stopping`` is set, then the agent is
   cancelled, so its ``finally`` blocks and ``async with`` exits run, once. Awaits
   they make get up to `stop_timeout` seconds through ``ctx.cleanup()`` and are then
   cancelled for good. When the agent has finished, `trio.Cancelled` propagates.

What cannot be bounded
  The agent shares the supervisor's thread and loop, and trio's cancellation is
  cooperative: it is delivered at checkpoints. So no deadline can end

  - an agent that blocks the loop synchronously (``time.sleep``, a busy loop, blocking
    I/O, a long computation): every agent, and the supervisor itself, stands still until
    it yields;
  - an agent that shields itself (a ``trio.CancelScope(shield=True)`` or anyio's
    ``CancelScope(shield=True)`` of its own without a deadline), or that catches
    `trio.Cancelled` and keeps awaiting in a loop: a stop then waits for it as long as
    it chooses to go on.

  Blocking work belongs in ``trio.to_thread.run_sync`` (or a process agent); cleanup
  that must await belongs in ``with ctx.cleanup():``.

The entry is imported by `supervisor.runners.entry` (fresh imports of folder agents).
"""

from __future__ import annotations

import trio

from supervisor.context import AgentContext
from supervisor.core.outcome import Outcome, describe_exception, is_signal_interrupt
from supervisor.logs import agent_log
from supervisor.manifest import AgentSpec
from supervisor.runners import Hooks
from supervisor.runners.entry import EntryError, load_entry

# How many leaves of an exception group an Outcome's error lists by name.
_LISTED_LEAVES = 3


async def run_inprocess(spec: AgentSpec, hooks: Hooks) -> Outcome:
    """Start the in-process agent `spec` once and return how it ended.

    Args:
      spec: an agent of kind ``"in-process"``.
      hooks: told ``launched(None)`` just before the entry is called, and ``ready()`` at
        the same time (``ready = "immediate"``) or when the agent calls ``ctx.ready()``.

    Returns:
      ``Outcome(code=0)`` if the agent returned, ``Outcome(code=n)`` for
      ``SystemExit(n)``, ``Outcome(error="ValueError: boom")`` if it raised, or
      ``Outcome(start_failed=True, error=...)`` if its entry cannot be loaded.

    Raises:
      trio.Cancelled: when cancelled, which is how an agent is stopped: ``ctx.stopping``
        is set, the agent is cancelled, its cleanup runs (awaits in ``ctx.cleanup()``
        get up to `stop_timeout`), and then the cancellation propagates. Errors the agent
        raises while being stopped are logged, not returned.
      KeyboardInterrupt: only trio's own, for a SIGINT to the process; one the agent
        raises is its failure.
    """
    try:
        main = load_entry(spec)
    except EntryError as exc:
        agent_log(spec.id).error("%s", exc, exc_info=exc.__cause__)
        await trio.lowlevel.checkpoint()
        return Outcome(start_failed=True, error=str(exc))
    # Stopped before it started (the stop came during the import): it never starts.
    await trio.lowlevel.checkpoint_if_cancelled()
    if (why := hooks.may_spawn()) is not None:  # after the last await: the import's
        return Outcome(start_failed=True, error=f"not started: {why}")
    # The agent gets a copy of its params (at its first use of ctx.params): it may
    # change them, the spec must stay as the manifest says.
    ctx = AgentContext(spec.id, spec.params, spec.stop_timeout, hooks)
    hooks.on_stop(ctx._request_stop)
    hooks.launched(None)
    if spec.ready == "immediate":
        ctx.ready()
    # The agent runs in this frame, not in one of ours below it: a running agent's stack
    # holds nothing of the runner but this (each frame of a waiting task is kept).
    #
    # A requested stop reaches the agent in two steps: the slot calls the callback
    # registered with ``hooks.on_stop`` (which sets ``ctx.stopping``), then cancels. So
    # code in the agent's ``finally`` sees ``ctx.stopping`` set when it was stopped,
    # whether the stop came while it ran or while it was still starting. No task of our
    # own watches for the stop: at 10,000 agents, a task per agent is memory we keep.
    interrupt: BaseException | None = None
    try:
        await main(ctx)
    except trio.Cancelled as exc:
        if ctx._stop_requested_at is not None:
            # The stop's own cancellation, with nothing else: it goes on to the scope
            # that was cancelled as it is (no second checkpoint to raise it again: a
            # third of the cost of stopping 10,000 agents).
            raise
        outcome = _outcome_of(exc, ctx)
    except BaseException as exc:
        if is_signal_interrupt(exc):
            interrupt = exc  # a Ctrl-C to the supervisor, not the agent's doing
        outcome = _outcome_of(exc, ctx)
    else:
        outcome = Outcome(code=0)
    if interrupt is not None:
        raise interrupt  # out of the agent's frame, as trio raised it
    # After a stop the agent got the cancellation and has finished with it, but the
    # scope outside is still cancelled: this raises the stop's Cancelled once more, for
    # the caller. (Cancelled just as the agent ended by itself, it wins too.)
    await trio.lowlevel.checkpoint_if_cancelled()
    return outcome


def _outcome_of(exc: BaseException, ctx: AgentContext) -> Outcome:
    """Classify what the agent raised, and log it (called in the ``except`` clause)."""
    if is_signal_interrupt(exc):
        return Outcome(error="KeyboardInterrupt")  # raised again by the caller
    errors = _without_cancelled(exc)
    if errors is None:
        # Only a stop cancels the agent from outside; a Cancelled without one is an
        # agent that raised a cancellation of its own making.
        return Outcome(error=describe_exception(exc))
    outcome = _exit_outcome(errors)
    if _lone_exit(errors) is not None:
        return outcome  # not a crash: no traceback to show
    if ctx._stop_requested_at is not None:
        ctx.log.warning("raised while stopping: %s", outcome.error, exc_info=errors)
    else:
        ctx.log.error("crashed: %s", outcome.error, exc_info=errors)
    return outcome


def _without_cancelled(exc: BaseException) -> BaseException | None:
    """`exc` minus its `trio.Cancelled` parts (an agent's nursery may mix both)."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(trio.Cancelled)[1]
    return None if isinstance(exc, trio.Cancelled) else exc


def _exit_outcome(exc: BaseException) -> Outcome:
    """The `Outcome` of an agent that raised `exc` (which holds no Cancelled).

    A group with one leaf counts as that leaf: with trio's strict exception groups an
    error in a nursery's child arrives wrapped, and the user raised the leaf.
    """
    exit_ = _lone_exit(exc)
    if exit_ is not None:
        if exit_.code is None or isinstance(exit_.code, int):
            return Outcome(code=exit_.code or 0)
        return Outcome(code=1, error=str(exit_.code))  # sys.exit("message"), as Python does
    leaves = _leaves(exc)
    if len(leaves) == 1:
        return Outcome(error=describe_exception(leaves[0]))
    listed = [describe_exception(leaf) for leaf in leaves[:_LISTED_LEAVES]]
    if len(leaves) > _LISTED_LEAVES:
        listed.append(f"and {len(leaves) - _LISTED_LEAVES} more")
    return Outcome(error=f"{len(leaves)} exceptions: " + "; ".join(listed))


def _lone_exit(exc: BaseException) -> SystemExit | None:
    """The `SystemExit` that `exc` is, alone or as the one leaf of a group."""
    leaves = _leaves(exc)
    if len(leaves) == 1 and isinstance(leaves[0], SystemExit):
        return leaves[0]
    return None


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]
