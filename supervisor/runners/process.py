"""The process runner: one child process, in a process group of its own, and its output.

`run_process` keeps the runner contract of `supervisor.runners`. The child leads a new
process group (pgid == pid); its stdin is /dev/null and its stdout and stderr are
relayed line by line to the log, tagged with the agent's id (`supervisor.runners.pipes`).
With ``ready = "notify"`` it also gets ``$NOTIFY_SOCKET`` (`supervisor.runners.notify`).
How it is spawned, as which user, is `supervisor.runners.launch`; every process it
starts, in its group or not, is its `AgentProcesses` (`supervisor.runners.containment`).
The exit is awaited on a pidfd, so waiting costs nothing while the child runs.

Ending, in every case (exit, stop, error), in this order: SIGKILL to the group and to
every other process of the run while the exited leader is still an unreaped zombie (its
pid, and so the group id, cannot have been reused yet), wait for them (bounded), then
reap the leader, then let the output pipes drain to end of file (a short, bounded wait)
and flush a partial last line. Only then is the group unregistered from the `Keeper`.
"""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, AsyncExitStack, nullcontext
from typing import Any, TypeVarTuple

import attrs
import trio

from supervisor.health.sdwatchdog import watchdog_command, watchdog_environment
from supervisor.keeper import MARK_VARIABLE, Keeper
from supervisor.logs import log
from supervisor.manifest import AgentSpec
from supervisor.runners import Hooks, Outcome
from supervisor.runners.containment import AgentProcesses, Containment
from supervisor.runners.launch import (
    SHORT_OF_FDS,
    Child,
    Identity,
    environment,
    identity,
    notify_socket_error,
    start_error,
)
from supervisor.runners.notify import NotifyRelay, NotifySocket, open_notify_socket
from supervisor.runners.pipes import LineRelay

# After everything is SIGKILLed the pipes reach EOF at once, unless a process we could
# not find still holds them; we stop waiting for that after this long.
DRAIN_TIMEOUT = 1.0
DRAIN_LIMIT = 30.0  # ... and however long the output takes to relay, not longer than this
# SIGKILL cannot be ignored, but a process stuck in the kernel (D state) can delay its
# death; the shielded cleanup must stay bounded all the same.
KILL_TIMEOUT = 5.0
_ANCESTRY = Containment()  # when the caller gives none

Ts = TypeVarTuple("Ts")


def run_process(
    spec: AgentSpec,
    hooks: Hooks,
    *,
    keeper: Keeper | None = None,
    containment: Containment | None = None,
) -> Coroutine[Any, Any, Outcome]:
    """Run ``spec.command`` once: await it for how it ended.

    Not itself an ``async def``: it returns the coroutine that runs the agent, so that a
    running agent's stack holds one frame less (docs/operations.md, "A flood of output").

    Args:
      spec: a ``kind = "process"`` agent.
      hooks: told ``launched(pid)`` after the spawn, ``ready()`` at once or on
        ``READY=1``, and what else the agent says on ``$NOTIFY_SOCKET``; on a stop,
        ``stopped(outcome)`` just before Cancelled propagates.
      keeper: if given, the group is registered with it while it exists, so it dies
        even if the supervisor is SIGKILLed.
      containment: how the run's processes are found (cgroup or ancestry); by
        ancestry if not given.

    Returns:
      ``Outcome(code=…)`` or ``Outcome(signal=…)`` once the child exited by itself
      (every other process of the run has been killed), or ``Outcome(start_failed=True,
      error=…)`` if it could not be started; never raises for what the child does.

    Raises:
      trio.Cancelled: the stop. Shielded and bounded, every process of the run first
        gets ``spec.stop_signal`` (and SIGCONT, in case it is stopped), then up to
        ``spec.stop_timeout`` seconds to exit, then SIGKILL; the leader is reaped and
        its output drained before Cancelled propagates.
    """
    if not spec.command:
        return _given(Outcome(start_failed=True, error="command is empty"))
    try:
        who = identity(spec)
    except (ValueError, KeyError, OSError) as exc:
        return _given(Outcome(start_failed=True, error=f"cannot start {spec.command[0]!r}: {exc}"))
    if spec.ready != "notify" and spec.watchdog <= 0:
        return _supervise(spec, hooks, who, None, keeper, containment)
    return _with_notify_socket(spec, hooks, who, keeper, containment)


async def _given(outcome: Outcome) -> Outcome:
    return outcome


async def _with_notify_socket(
    spec: AgentSpec,
    hooks: Hooks,
    who: Identity | None,
    keeper: Keeper | None,
    containment: Containment | None,
) -> Outcome:
    async with AsyncExitStack() as stack:
        try:
            notify = await stack.enter_async_context(open_notify_socket(spec.id))
        except OSError as exc:
            return Outcome(
                start_failed=True,
                error=notify_socket_error(exc, spec),
                short_of_resources=exc.errno in SHORT_OF_FDS,
            )
        return await _supervise(spec, hooks, who, notify, keeper, containment)


def _launch(
    spec: AgentSpec,
    hooks: Hooks,
    who: Identity | None,
    notify: NotifySocket | None,
    keeper: Keeper | None,
    run: AgentProcesses,
) -> Child | Outcome:
    """Spawn the leader, or say why not. Sync, so that the environment built for the
    spawn is garbage once it returns, not kept for as long as the child runs."""
    assert spec.command
    extra = [run.environment()]
    if who is not None:
        extra.insert(0, who.env)
    if notify is not None:
        extra.append({b"NOTIFY_SOCKET": notify.path.encode()})
        extra.append(watchdog_environment(spec))
    if keeper is not None:
        extra.append({MARK_VARIABLE.encode(): keeper.mark.encode()})
    try:
        env = environment(spec, *extra)
        command = watchdog_command(spec, env)
        if (why := hooks.may_spawn()) is not None:  # the last step before the spawn
            return Outcome(start_failed=True, error=f"not started: {why}")
        return Child.spawn(spec, env, command, who)
    except (OSError, ValueError) as exc:
        short = isinstance(exc, OSError) and exc.errno in SHORT_OF_FDS
        return Outcome(start_failed=True, error=start_error(exc, spec), short_of_resources=short)


@attrs.define
class _Run:
    """One run as `_supervise` sees it: the leader, every process, the relays."""

    spec: AgentSpec
    child: Child
    processes: AgentProcesses
    relays: list[LineRelay]
    notifications: NotifyRelay | None
    ended: bool = False  # a stop saw every process of the run end within stop_timeout


async def _supervise(
    spec: AgentSpec,
    hooks: Hooks,
    who: Identity | None,
    notify: NotifySocket | None,
    keeper: Keeper | None,
    containment: Containment | None,
) -> Outcome:
    """Spawn the leader and watch it until it exits or we are cancelled; end it either way.

    The output pipes are read by the one `OutputPump` (a stopping agent's output is
    still relayed); the notification relay, if any, is a helper task that runs shielded
    and is stopped explicitly once the run has ended, so a stop leaves as the bare
    `trio.Cancelled` it came in as rather than wrapped in an exception group.
    """
    processes = (containment or _ANCESTRY).open_run(spec.id)
    child = _launch(spec, hooks, who, notify, keeper, processes)
    if isinstance(child, Outcome):
        processes.close()
        return child
    processes.adopt(child.pid)  # before any checkpoint: no reaper may take it first
    if keeper is not None:
        keeper.register(child.pid)
    sink = hooks.output
    relays = [
        LineRelay(spec.id, "stdout", child.stdout_fd, sink),
        LineRelay(spec.id, "stderr", child.stderr_fd, sink),
    ]
    run = _Run(spec, child, processes, relays, None)
    stop_request: trio.Cancelled | None = None
    killed = False
    try:
        try:
            for line_relay in relays:
                line_relay.start()
        except OSError as exc:  # short of descriptors for the pump: undo the spawn
            for line_relay in relays:
                line_relay.close()
            await _finish(run)
            short = exc.errno in SHORT_OF_FDS
            return Outcome(
                start_failed=True, error=start_error(exc, spec), short_of_resources=short
            )
        # A nursery only for the notification relay (no frame of its own for the wait).
        helpers: AbstractAsyncContextManager[trio.Nursery | None] = (
            nullcontext() if notify is None else trio.open_nursery()
        )
        async with helpers as nursery:
            helper = None
            if nursery is not None and notify is not None:
                run.notifications = relay = NotifyRelay(spec.id, hooks, processes.owns)
                helper = _start_shielded(nursery, relay.run, notify)
            try:
                hooks.launched(child.pid)
                if spec.ready != "notify":
                    hooks.ready()
                await child.wait_exited()
                child.exited = True
            except trio.Cancelled as cancelled:
                stop_request = cancelled
                with trio.CancelScope(shield=True):
                    killed = await _stop(run)
            finally:
                try:
                    await _finish(run)
                finally:
                    for line_relay in relays:
                        line_relay.close()
                    if helper is not None:
                        helper.cancel()
    finally:
        child.close()
        processes.close()
        if keeper is not None:
            keeper.unregister(child.pid)
    if stop_request is not None:
        hooks.stopped(attrs.evolve(child.outcome, killed=True) if killed else child.outcome)
        raise stop_request
    return child.outcome


def _start_shielded(
    nursery: trio.Nursery, async_fn: Callable[[*Ts], Awaitable[object]], *args: *Ts
) -> trio.CancelScope:
    """Start ``async_fn(*args)`` in `nursery`, shielded: only the scope returned stops it."""
    scope = trio.CancelScope(shield=True)

    async def run() -> None:
        with scope:
            await async_fn(*args)

    nursery.start_soon(run)
    return scope


async def _stop(run: _Run) -> bool:
    """Ask every process of the run to stop and give them ``stop_timeout`` to finish
    (leader, output, the others); ``EXTEND_TIMEOUT_USEC=`` moves that deadline. Returns
    whether they needed SIGKILL (they get it in `_finish`)."""
    spec, child = run.spec, run.child
    for sig in (spec.stop_signal, signal.SIGCONT):
        child.signal_group(sig)
    run.processes.signal(spec.stop_signal, signal.SIGCONT)
    began = trio.current_time()
    with trio.move_on_after(spec.stop_timeout) as grace:
        if run.notifications is not None:
            run.notifications.stop_grace = grace
        await child.wait_exited()
        child.exited = True
        # The others before the output: one that missed the signal (it was being
        # re-parented to us as we looked) may hold the pipes; wait_gone signals it.
        await run.processes.wait_gone()
        for line_relay in run.relays:
            if not line_relay.eof:  # (a checkpoint each otherwise: a round of the loop)
                await line_relay.wait_eof()
        run.ended = True
    if grace.cancelled_caught:
        others = run.processes.pids()
        log.warning(
            "%s: still running %.1fs after %s; sending SIGKILL to all its processes%s",
            spec.id,
            trio.current_time() - began,
            spec.stop_signal.name,
            f" (pids {', '.join(map(str, others))} besides the leader)" if others else "",
        )
    return grace.cancelled_caught


async def _finish(run: _Run) -> None:
    """Kill what is left of the run, reap the leader, drain the output. Bounded, and
    shielded where it waits: after a leader that exited by itself and left nothing (a
    crash), it has nothing to wait for, and enters no scope at all."""
    child = run.child
    child.signal_group(signal.SIGKILL)
    # After a stop that saw them all end there is nothing left to look for (the common
    # case: a shutdown of N agents reads /proc twice per agent, not five times).
    left = not run.ended and run.processes.kill()
    if left or not child.exited:
        with trio.CancelScope(shield=True):
            if left:
                with trio.move_on_after(KILL_TIMEOUT):
                    await run.processes.wait_gone()
            if not child.exited:  # a stop that did not wait for it, or an undone spawn
                with trio.move_on_after(KILL_TIMEOUT):
                    await child.wait_exited()
                    child.exited = True
    if child.exited:
        run.processes.settle()  # no move into its cgroup may write its pid after this
        child.reap()
    if not all([line_relay.ended() for line_relay in run.relays]):
        with trio.CancelScope(shield=True):
            for line_relay in run.relays:
                await line_relay.drain(DRAIN_TIMEOUT, DRAIN_LIMIT)
