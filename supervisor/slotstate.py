"""A slot's states, the snapshot of a slot that readers get (`Slot.statistics()`), and
its state changes with what an agent says of itself beyond ``READY=1`` (`AgentSays`, part
of the slot's Hooks)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import attrs
import trio

from supervisor.core.outcome import ExitRecord, Outcome
from supervisor.health.monitor import HealthRecord
from supervisor.logs import log
from supervisor.manifest import AgentSpec, Source

if TYPE_CHECKING:
    from supervisor.events import EventBus

State = Literal["starting", "running", "backoff", "stopping", "stopped", "exited", "failed"]
ACTIVE: frozenset[State] = frozenset({"starting", "running", "backoff", "stopping"})
_LEVELS: dict[State, int] = dict.fromkeys(("running", "exited", "stopped"), logging.INFO)
_LEVELS.update(dict.fromkeys(("backoff", "failed"), logging.WARNING))


def log_change(agent_id: str, state: State, reason: str) -> None:
    """Log a slot's new state: a failure as a warning, running and the ends as info,
    the rest at debug; nothing is made at a level that is off (most, by default)."""
    level = _LEVELS.get(state, logging.DEBUG)
    if not log.isEnabledFor(level):
        return
    about = {"about": agent_id}
    if level == logging.WARNING:
        log.warning("%s: %s (%s)", agent_id, state, reason, extra=about)
    elif level == logging.INFO:
        why = f" ({reason})" if reason else ""
        log.info("%s: %s%s", agent_id, state, why, extra=about)
    else:
        log.debug("%s: %s", agent_id, state, extra=about)


@attrs.frozen
class SlotStatistics:
    """A snapshot of a slot, for the API, the CLI and metrics. Times are trio time."""

    id: str
    kind: str
    source: Source
    state: State
    pid: int | None
    restarts: int
    since: float
    started_at: float | None  # when it last became running
    last_exit: ExitRecord | None
    status: str
    reason: str
    spec: AgentSpec
    health: HealthRecord | None = None  # with a probe or a watchdog
    blocked: float = 0.0  # seconds an in-process agent held the event loop


class AgentSays:
    """A `Slot`'s state changes (`_set`: logged, published, notified), and its sd_notify
    hooks (docs/agents.md, "sd_notify"), which change it."""

    spec: AgentSpec
    state: State
    reason: str
    since: float
    pid: int | None
    restarts: int
    _events: EventBus | None
    _changed: trio.Event | None
    _on_change: Callable[[Any], None] | None  # (the slot)
    _timer: trio.CancelScope | None  # the start timer, while a run is under way
    _is_ready: bool
    started_at: float | None  # when it last became running
    _reloading = False  # said RELOADING=1, not yet READY=1 again
    _stop_outcome: Outcome | None = None  # how a run ended by a stop ended (`stopped()`)

    def _set(self, state: State, reason: str) -> None:
        if state != self.state:
            self.since = trio.current_time()
        self.state = state
        self.reason = reason
        log_change(self.spec.id, state, reason)
        self._publish()
        self._notify()

    def _publish(self) -> None:
        if self._events is not None:
            self._events.agent(
                self.spec.id, self.state, self.reason, self.pid, self.restarts, self.since
            )

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None
        if self._on_change is not None:
            self._on_change(self)

    def _attempt_begins(self) -> None:
        """What the agent said in its last attempt is forgotten."""
        self.started_at = None
        if self._stop_outcome is not None:
            self._stop_outcome = None
        self._is_ready = False
        if self._reloading:
            self._reloading = False

    def stopping(self) -> None:
        if self._timer is not None and self.state != "stopping":
            self._reloading = False
            self._set("stopping", "stopping by itself (STOPPING=1)")

    def reloading(self) -> None:
        if self._timer is not None and self._is_ready and self.state == "running":
            self._reloading = True
            self._set("starting", "reloading (RELOADING=1)")

    def extend_timeout(self, seconds: float) -> None:
        timer = self._timer
        if timer is not None and not self._is_ready:
            timer.deadline = max(timer.deadline, trio.current_time() + seconds)

    def stopped(self, outcome: Outcome) -> None:
        self._stop_outcome = outcome
