"""A slot: one agent's whole life, as one trio task.

The life task starts the agent through its runner, waits for it to be ready (within
`start_timeout`), watches it end, asks the `RestartPolicy` what next, backs off and
starts it again, until the policy gives up (``exited`` / ``failed``) or a stop is
requested (``stopped``). A stop cancels the scope the life task awaits in (one at a time: the
wait for `after`, an attempt with its start timer as the deadline, a backoff); the runner
then stops the agent within its `stop_timeout` (shielded, bounded), so once
`wait_stopped()` returns nothing of the agent is left.

Every change of state, pid or history replaces ``changed`` (an event set on change), so
readers wait for a change at O(1) cost and nothing polls.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial

import trio

from supervisor.core.outcome import ExitRecord, Outcome
from supervisor.core.policy import Restart, RestartPolicy, describe, succeeded
from supervisor.events import EventBus
from supervisor.health.lag import RUNNING_AGENT, SLOT_TASK_PREFIX
from supervisor.health.monitor import HealthRecord, needs_health, run_monitored
from supervisor.logs import log
from supervisor.manifest import AgentSpec, ReadyProbe, Source
from supervisor.output import LineListener, RecentOutput
from supervisor.runners import Runner
from supervisor.slotstate import ACTIVE, AgentSays, SlotStatistics, State

HISTORY = 10  # exits kept per slot

# Given a spec, wait until everything it is `after` is up; return why it can't start, or None.
AfterWaiter = Callable[[AgentSpec], Awaitable[str | None]]
# Given an agent id, whether it may start right now: None, or why not (supervisor.placement).
MayStart = Callable[[str], str | None]


class Slot(AgentSays):
    """One agent's slot. Only the supervisor's owner task calls `launch` and `stop`.

    Args:
      spec: the agent.
      runner: runs the agent once (see `supervisor.runners`).
      source: where the agent was declared.
      wait_after: waits for the agents this one is `after` before its first start.
      on_change: called after every state change (sync, must not block).
      may_start: None, or why not: asked before every attempt and by the runner right
        before its spawn (`may_spawn`); a no ends it ``stopped``, `refused` set.
      events: where its changes of state, reason and pid are published.
    """

    # Class-level defaults, set on an instance only when used: 10,000 slots that have no
    # probe, no watchdog and never block the loop keep no bytes for them.
    health: HealthRecord | None = None
    blocked = 0.0  # seconds of loop held in steps longer than loop_lag_warning
    blocked_steps = 0
    loop_time = 0.0  # seconds its tasks held the loop, all steps (in-process, health/lag.py)
    _failure: str | None = None  # why `fail` ended the run under way
    active = False  # whether the life task is running (from `launch` until it has returned)
    _stop_requested = False  # `stop` was called during this life
    _launches = 0  # lives begun: `wait_stopped` waits for the end of its own
    _restart: Callable[[], None] | None = None  # an immediate restart's bookkeeping, due

    def __init__(
        self,
        spec: AgentSpec,
        runner: Runner,
        *,
        source: Source = "manifest",
        wait_after: AfterWaiter | None = None,
        on_change: Callable[[Slot], None] | None = None,
        may_start: MayStart | None = None,
        events: EventBus | None = None,
    ) -> None:
        self.spec = spec
        self.source: Source = source
        self.state: State = "stopped"
        self.pid: int | None = None
        self.restarts = 0
        self.since = trio.current_time()
        self.started_at: float | None = None
        self.exits: tuple[ExitRecord, ...] = ()  # the last HISTORY exits, oldest first
        self.status_text = ""  # the agent's own one-line status (STATUS=, ctx.status)
        self.reason = "not started" if spec.enabled else "disabled"
        self._changed: trio.Event | None = None  # made on demand: most slots have no reader
        self.attempts_ended = 0
        self.readied = 0  # attempts that became ready
        self._runner = runner
        self._wait_after = wait_after
        self._on_change = on_change
        self._may_start = may_start
        self.refused: str | None = None  # why the last start was not allowed (may_start)
        self._events = events
        self._scope: trio.CancelScope | None = None  # the one the life task awaits in
        # During an attempt: its scope, whose deadline is the start timer, and whether
        # the agent said it is ready.
        self._timer: trio.CancelScope | None = None
        self._is_ready = False
        self._stop_callback: Callable[[], None] | None = None
        # The agent's recent output, made at its first line (most agents print little or
        # nothing), kept across restarts (docs/api.md, logs).
        self.recent_output: RecentOutput | None = None
        if needs_health(spec):
            self.health = HealthRecord(spec)

    # -- the owner's side -------------------------------------------------------------

    @property
    def up(self) -> bool:
        """Running, or ended well and not to be restarted (a one-shot that did its job)."""
        if self.state == "exited" and self.exits:
            return self._ok(self.exits[-1])
        return self.state == "running"

    @property
    def changed(self) -> trio.Event:
        """An event set at the slot's next change of state, pid, status or history."""
        if self._changed is None:
            self._changed = trio.Event()
        return self._changed

    def launch(self, nursery: trio.Nursery) -> None:
        """Start the life task in `nursery`. The slot must not be active."""
        assert not self.active, f"{self.spec.id} launched twice"
        self.active = True
        self._launches += 1
        self._stop_requested = False
        self.refused = None
        self._set("starting", "")
        if self.health is not None:
            self._nursery = nursery  # where its health watcher runs (see run_monitored)
        nursery.start_soon(self._run, name=SLOT_TASK_PREFIX + self.spec.id)

    def stop(self) -> None:
        """Request a stop; `wait_stopped()` returns once the agent is gone. Idempotent."""
        if self.active and not self._stop_requested:
            self._stop_requested = True
            self._set("stopping", "stop requested")
            if self._stop_callback is not None:
                self._stop_callback()  # the runner's first word of the stop
            if self._scope is not None:
                self._scope.cancel()

    async def wait_stopped(self) -> None:
        """Wait until the life task has returned (stopped, exited or failed)."""
        launches = self._launches
        if not self.active:
            await trio.lowlevel.checkpoint()
        while self.active and self._launches == launches:
            await self.changed.wait()

    async def wait_started(self) -> str | None:
        """Wait for the current start to settle: None once running (or exited ok).

        Returns the reason when the start failed instead: the attempt ended before the
        agent was ready, or the slot ended failed or stopped.
        """
        readied, ended = self.readied, self.attempts_ended
        while True:
            # Once ready, the start succeeded, even if the run ended a moment later.
            if self.up or self.readied > readied:
                return None
            if self.attempts_ended > ended and self.exits:
                return self.describe_exit(self.exits[-1])
            if self.state in ("failed", "stopped", "exited"):
                return self.reason or "did not start"
            await self.changed.wait()

    def statistics(self) -> SlotStatistics:
        return SlotStatistics(
            id=self.spec.id,
            kind=self.spec.kind,
            source=self.source,
            state=self.state,
            pid=self.pid,
            restarts=self.restarts,
            since=self.since,
            started_at=self.started_at,
            last_exit=self.exits[-1] if self.exits else None,
            status=self.status_text,
            reason=self.reason,
            spec=self.spec,
            health=self.health,
            blocked=self.blocked,
        )

    # -- the runner's side (Hooks) ----------------------------------------------------

    def may_spawn(self) -> str | None:
        """`may_start`, before each attempt and as the runner's last step before a spawn."""
        self.refused = None if self._may_start is None else self._may_start(self.spec.id)
        return self.refused

    def launched(self, pid: int | None) -> None:
        self._restarted()  # (an immediate restart's states, now its spawn is made)
        self.pid = pid
        if pid is not None:
            self._publish()
        self._notify()

    def ready(self) -> None:
        if not isinstance(self.spec.ready, ReadyProbe):  # else its probe says when
            self.probe_ready()

    def probe_ready(self) -> None:  # by the agent (ready), or by its ready probe
        if self._timer is None or self.state == "stopping":
            return
        if not self._is_ready:
            self._is_ready = True
            self.readied += 1
            self._timer.deadline = math.inf  # ready: the start timer is off
            self.started_at = trio.current_time()
            self._set("running", "")
        elif self._reloading:
            self._reloading = False
            self._set("running", "")

    def status(self, text: str) -> None:
        self.status_text = text
        self._notify()

    def on_stop(self, callback: Callable[[], None]) -> None:
        self._stop_callback = callback

    def output(self, stream: str, lines: Sequence[str]) -> None:
        self.output_buffer().add(stream, lines, time.time())

    def heartbeat(self) -> None:
        if self.health is not None:
            self.health.last_beat = trio.current_time()

    def fail(self, reason: str) -> None:
        """End the run under way as failed with `reason`: stopped like a stop, then the
        restart policy decides. Ignored outside a run, or once a stop was requested."""
        if self._timer is None or self._stop_requested or self._failure is not None:
            return
        self._failure = reason
        log.warning("%s: %s; stopping it", self.spec.id, reason, extra={"about": self.spec.id})
        self._set("stopping", reason)
        if self._stop_callback is not None:
            self._stop_callback()
        self._timer.cancel()

    # -- observers ----------------------------------------------------------------------

    def output_buffer(self) -> RecentOutput:
        """The agent's recent output (made now if it has printed nothing yet)."""
        if self.recent_output is None:
            self.recent_output = RecentOutput(self.spec.log_lines)
        return self.recent_output

    def watch_output(self, listener: LineListener) -> Callable[[], None]:
        """Call `listener(stream, lines)` with every batch of output from now on (cheap,
        sync: the ``log`` ready probe's hook); returns the way to stop."""
        return self.output_buffer().listen(listener)

    def keep_output_of(self, previous: Slot) -> None:
        """Take over the recent output of the slot this one replaces (same id)."""
        self.recent_output = previous.recent_output
        if self.recent_output is not None:
            self.recent_output.max_lines = self.spec.log_lines

    def removed(self) -> None:
        """The owner dropped the slot from its table: end the followers of its output."""
        if self.recent_output is not None:
            self.recent_output.close()

    # -- the life task ----------------------------------------------------------------

    async def _run(self) -> None:
        """The whole life in one frame (each frame of a waiting task is kept)."""
        if self.spec.kind == "in-process":
            RUNNING_AGENT.set(self)  # its steps count as its CPU time
        try:
            if self._wait_after is not None and self.spec.after:
                self.reason = "waiting for " + ", ".join(self.spec.after)
                self._notify()
                with self._cancellable():
                    why = await self._wait_after(self.spec)
                if self._stop_requested:
                    return
                if why is not None:
                    self._set("failed", why)
                    return
            policy = None  # made at the first end: most agents never end
            while self.may_spawn() is None:
                if self._restart is None:
                    self._begin()
                got: Outcome | None = None
                try:  # the start timer is the deadline of the scope, lifted by `ready()`
                    with self._cancellable(self.spec.start_timeout) as self._timer:
                        try:
                            if (health := self.health) is None:
                                got = await self._runner(self.spec, self)
                            else:
                                got = await run_monitored(
                                    self._runner, self.spec, self, health, self._nursery
                                )
                        finally:
                            self._restarted()  # (if the runner spawned nothing)
                            self._timer = None
                            self._stop_callback = None
                except trio.Cancelled:  # from outside (its nursery): keep how it ended
                    self._record(self._stop_outcome or Outcome(), stopped=True)
                    raise
                self.pid = None
                if self._stop_requested and got is None:  # a stop ended it
                    self._record(self._stop_outcome or Outcome(), stopped=True)
                    return
                if self.refused is not None:
                    break  # refused by the runner's last check (may_spawn): nothing ran
                now = trio.current_time()
                ran_for = 0.0 if self.started_at is None else now - self.started_at
                outcome = self._ended(got)
                policy = policy or RestartPolicy(self.spec)
                decision = policy.decide(outcome, ran_for=ran_for, now=now)
                if not isinstance(decision, Restart):
                    self._record(outcome)
                    self._set("failed" if decision.failed else "exited", decision.reason)
                    return
                restart = partial(self._restarting, outcome, decision.delay)
                # No delay: respawn before the tasks its exit woke and before its bookkeeping
                # (`launched` does it, in this step: docs/performance.md, crash -> running).
                if decision.delay or outcome.start_failed or self.spec.kind != "process":
                    restart()
                    with self._cancellable(decision.delay):
                        await trio.sleep_forever()
                else:
                    self._restart = restart
                if self._stop_requested:
                    return
            self._restarted(begin=False)  # (refused: its exit, then why not)
            self._set("stopped", f"not started: {self.refused}")
        finally:
            self._restarted(begin=False)
            self.pid = None
            self.active = False
            if self.state in ACTIVE:
                killed = bool(self.exits) and self.exits[-1].killed
                self._set(
                    "stopped", "SIGKILL after stop_timeout" if killed else "stopped on request"
                )
            self._notify()

    def _begin(self) -> None:
        if self.state != "starting" or self.reason:  # (as `launch` left it: no news)
            self._set("starting", "")
        self._attempt_begins()

    def _restarting(self, outcome: Outcome, delay: float) -> None:
        self._record(outcome)
        self.restarts += 1
        self._set("backoff", f"{describe(outcome)}; restart in {delay:.2f}s")

    def _restarted(self, *, begin: bool = True) -> None:
        """The bookkeeping of an immediate restart, if due: its exit, backoff, starting."""
        if (restart := self._restart) is not None:
            self._restart = None
            restart()
            if begin:
                self._begin()

    def _cancellable(self, timeout: float = math.inf) -> trio.CancelScope:
        """The scope of the life task's next wait, ending after `timeout` s: `stop`
        cancels it. One at a time (each scope in effect costs two sets in trio)."""
        scope = self._scope = trio.CancelScope(deadline=trio.current_time() + timeout)
        if self._stop_requested:
            scope.cancel()
        return scope

    def _ended(self, outcome: Outcome | None) -> Outcome:
        """How the attempt ended: the runner's outcome, or why it was cut short."""
        killed = self._stop_outcome is not None and self._stop_outcome.killed
        if self._failure is not None:  # `fail` ended it: a monitor, or WATCHDOG=trigger
            failure, self._failure = self._failure, None
            return Outcome(error=failure, killed=killed)
        if outcome is None:  # its scope caught the cancellation: the start timer
            why = f"start timeout: not ready within {self.spec.start_timeout:g}s"
            return Outcome(error=why, killed=killed)
        return outcome

    def _record(self, outcome: Outcome, *, stopped: bool = False) -> None:
        record = ExitRecord.of(outcome, trio.current_time(), stopped=stopped)
        self.exits = (*self.exits[1 - HISTORY :], record)
        if not stopped:
            self.attempts_ended += 1

    # -- state ------------------------------------------------------------------------

    def _ok(self, rec: ExitRecord) -> bool:
        return succeeded(self.spec, Outcome(code=rec.code, signal=rec.signal, error=rec.error))

    @staticmethod
    def describe_exit(rec: ExitRecord) -> str:
        return describe(Outcome(code=rec.code, signal=rec.signal, error=rec.error))
