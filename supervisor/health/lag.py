"""Naming the in-process agent that blocks the event loop (``loop_lag_warning``).

In-process agents share the supervisor's trio loop. One that calls blocking code
(``time.sleep``, a sync HTTP client, a long computation) holds the loop for that long:
every other agent, the API and signal handling stand still. Cancellation cannot reach
it, but it can be named. `LoopLag` is a trio instrument timing every task step
(``before_task_step``/``after_task_step``: two ``perf_counter`` calls and a comparison per
step). A step longer than the threshold is attributed to the agent whose task it is,
logged as a warning naming the agent and the time, and added to the slot's `blocked`
seconds (shown in its AGENT and in /metrics).

Attribution costs nothing per agent: an in-process agent runs in its slot's own task,
named ``slot:ID``, and every task it starts is in a nursery under it; so only a slow step
walks up ``task.parent_nursery.parent_task`` to the first ``slot:`` task.

The instrument is installed when the first in-process agent is added (a supervisor of
processes only never pays for it) and stays until the run ends; with
``loop_lag_warning = 0`` it is not installed at all. Steps cost nothing while the loop
sleeps: an idle supervisor still never wakes up.

The same timing gives each in-process agent its CPU time (`supervisor.usage`): the slot's
life task sets `RUNNING_AGENT` to the slot, every task it and its agent start inherits it
(trio copies the context into new tasks), and each step of such a task adds its time to
the slot's `loop_time`: one context lookup per step, no memory per task.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Protocol

import trio

from supervisor.logs import log
from supervisor.manifest import AgentSpec

SLOT_TASK_PREFIX = "slot:"  # the name of a slot's life task (see `supervisor.slot`)


class Blockable(Protocol):
    """What the instrument updates in a slot."""

    spec: AgentSpec
    blocked: float
    blocked_steps: int
    loop_time: float


# The in-process slot whose tasks these are, set by the slot's life task (see above).
RUNNING_AGENT: ContextVar[Blockable | None] = ContextVar("supervisor_agent", default=None)


def agent_of(task: trio.lowlevel.Task) -> str | None:
    """The id of the slot whose task `task` is, or runs under; None if no slot's."""
    current: trio.lowlevel.Task | None = task
    while current is not None:
        if current.name.startswith(SLOT_TASK_PREFIX):
            return current.name[len(SLOT_TASK_PREFIX) :]
        nursery = current.parent_nursery
        current = None if nursery is None else nursery.parent_task
    return None


class LoopLag(trio.abc.Instrument):
    """Times task steps; names the in-process agent of any step longer than the threshold.

    Args:
      slots: the supervisor's slot table (read on a slow step only).
    """

    def __init__(self, slots: Mapping[str, Blockable]) -> None:
        self._slots = slots
        self._limit = math.inf
        self._step_started = 0.0
        self._installed = False

    def watch(self, threshold: float) -> None:
        """Use `threshold` seconds (0: off); install the instrument in this run if on."""
        self._limit = threshold if threshold > 0 else math.inf
        if not self._installed and self._limit < math.inf:
            trio.lowlevel.add_instrument(self)
            self._installed = True

    def set_threshold(self, threshold: float) -> None:
        """A new threshold (a reload), for steps from now on; 0 stops the warnings."""
        self._limit = threshold if threshold > 0 else math.inf

    def close(self) -> None:
        """Remove the instrument from the run, if installed."""
        if self._installed:
            self._installed = False
            try:
                trio.lowlevel.remove_instrument(self)
            except KeyError:
                pass

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._step_started = time.perf_counter()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        held = time.perf_counter() - self._step_started
        slot = task.context.get(RUNNING_AGENT)
        if slot is not None:
            slot.loop_time += held
        if held > self._limit:
            self._held(task, held)

    def _held(self, task: trio.lowlevel.Task, held: float) -> None:
        agent_id = agent_of(task)
        slot = None if agent_id is None else self._slots.get(agent_id)
        if slot is None or slot.spec.kind != "in-process":
            # The supervisor's own work (a big reload, say): worth a debug line only.
            log.debug("the task %s held the event loop for %.2fs in one step", task.name, held)
            return
        slot.blocked += held
        slot.blocked_steps += 1
        log.warning(
            "%s: held the event loop for %.2fs in one step (loop_lag_warning = %gs):"
            " every agent and the API waited; move blocking calls to trio.to_thread.run_sync",
            slot.spec.id,
            held,
            self._limit,
            extra={"about": slot.spec.id},
        )
