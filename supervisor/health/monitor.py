"""The health monitors of one run of an agent: a ready probe, a liveness probe, a watchdog.

`run_monitored` runs the agent through its runner with one more task beside it, the
watcher, which:

1. while the agent is ``starting`` with a probe table as `ready`: checks it every
   `period` (after `initial_delay`) until it first passes, then reports the agent ready
   (``log`` probes instead listen to the agent's output lines until one matches). The
   start timer (`start_timeout`) bounds this like any start.
2. once the agent is ``running``: checks `liveness` every `period` (after
   `initial_delay`); `failures` failed checks in a row end the run, through
   `Monitored.fail`, as ``liveness: <the last failure> three times``. And, with a
   `watchdog`, a timer: a heartbeat (``ctx.heartbeat()``, ``WATCHDOG=1``) only stores
   the time in `HealthRecord.last_beat`; the timer sleeps until the deadline that time
   gives, and looks again. No heartbeat within `watchdog` seconds ends the run as
   ``watchdog: no heartbeat within Ns``.

Ending a run is the slot's stop (stop_signal, stop_timeout, SIGKILL; ctx.stopping and
the cancellation in-process), and the restart policy then decides on the failure. A slot
with none of the three never comes here: it costs no task and no memory.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Protocol

import trio

from supervisor.core.outcome import Outcome
from supervisor.health.probes import open_check
from supervisor.manifest import AgentSpec, Probe, ReadyProbe
from supervisor.runners import Hooks, Runner


def needs_health(spec: AgentSpec) -> bool:
    """Whether `spec` has a probe or a watchdog (and so a `HealthRecord` in its slot)."""
    return spec.liveness is not None or spec.watchdog > 0 or isinstance(spec.ready, ReadyProbe)


class Monitored(Hooks, Protocol):
    """What the monitors need of a slot: the hooks, its state, and being ready by probe."""

    @property
    def state(self) -> str: ...

    @property
    def changed(self) -> trio.Event: ...

    def probe_ready(self) -> None:
        """The ready probe passed: the agent is running."""

    def watch_output(self, listener: Callable[[str, Sequence[str]], None]) -> Callable[[], None]:
        """Call `listener(stream, lines)` for each batch of the agent's output; returns
        the way to stop."""


class HealthRecord:
    """What one slot's health checks found, kept across its runs (for the API, metrics).

    `last_beat` is the trio time of the last heartbeat, set by the slot's ``heartbeat()``.
    """

    __slots__ = (
        "checked_at",
        "checks",
        "in_a_row",
        "last_beat",
        "probe",
        "result",
        "runs_ended",
        "watchdog",
    )

    def __init__(self, spec: AgentSpec) -> None:
        self.watchdog = spec.watchdog
        self.last_beat = 0.0
        self.probe = ""  # "ready" or "liveness": the probe last checked
        self.result = ""  # "ok", or what failed
        self.checked_at: float | None = None
        self.in_a_row = 0  # failed checks in a row of that probe
        # (probe, "ok" | "failed") -> checks; ("liveness" | "watchdog", "ended") -> runs
        self.checks: dict[tuple[str, str], int] = {}
        self.runs_ended = ""  # why health last ended a run

    def note(self, probe: str, failed: str | None) -> None:
        """Record one check of `probe`: None if it passed, else what failed."""
        self.probe = probe
        self.result = "ok" if failed is None else failed
        self.checked_at = trio.current_time()
        self.in_a_row = 0 if failed is None else self.in_a_row + 1
        self.count(probe, "ok" if failed is None else "failed")

    def count(self, what: str, result: str) -> None:
        key = (what, result)
        self.checks[key] = self.checks.get(key, 0) + 1


async def run_monitored(
    runner: Runner,
    spec: AgentSpec,
    slot: Monitored,
    record: HealthRecord,
    nursery: trio.Nursery,
) -> Outcome:
    """Run the agent once through `runner`, its monitors beside it; return its outcome.

    The watcher task runs in `nursery` (the one the slot's own task runs in), not in a
    nursery of the slot's: a nursery per run would wrap the stop's Cancelled in an
    exception group and double what stopping 10,000 watchdog agents costs. It is
    cancelled as soon as the runner is done, and waited for before this returns, so
    nothing of the run is left once it has ended.

    Raises:
      trio.Cancelled: the stop (or the run ended by a monitor, which cancels the slot's
        attempt). The watcher is shielded, so the runner's own stop is never cut short.
    """
    watcher = trio.CancelScope(shield=True)
    finished = trio.Event()

    async def watch() -> None:
        try:
            with watcher:
                await _watch(spec, slot, record)
        finally:
            finished.set()

    nursery.start_soon(watch)
    try:
        return await runner(spec, slot)
    finally:
        watcher.cancel()
        with trio.CancelScope(shield=True):
            await finished.wait()


async def _watch(spec: AgentSpec, slot: Monitored, record: HealthRecord) -> None:
    if isinstance(spec.ready, ReadyProbe):
        await _until_ready(spec.ready, spec, slot, record)
    while slot.state != "running":
        await slot.changed.wait()
    if spec.liveness is None and spec.watchdog > 0:  # the common case: no task more
        await _watchdog(spec.watchdog, slot, record)
    elif spec.liveness is not None and spec.watchdog <= 0:
        await _liveness(spec.liveness, spec, slot, record)
    elif spec.liveness is not None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_liveness, spec.liveness, spec, slot, record)
            nursery.start_soon(_watchdog, spec.watchdog, slot, record)


async def _until_ready(
    probe: ReadyProbe, spec: AgentSpec, slot: Monitored, record: HealthRecord
) -> None:
    """Check the ready probe until it first passes, then report the agent ready."""
    if probe.log is not None:
        await _wait_line(slot, re.compile(probe.log), probe.initial_delay)
        record.note("ready", None)
        slot.probe_ready()
        return
    await trio.sleep(probe.initial_delay)
    async with open_check(probe, spec) as check:
        while True:
            started = trio.current_time()
            failed = await check()
            record.note("ready", failed)
            if failed is None:
                slot.probe_ready()
                return
            await trio.sleep_until(started + probe.period)


async def _wait_line(slot: Monitored, pattern: re.Pattern[str], delay: float) -> None:
    """Return once a line of the agent's output matches (lines before `delay` count too)."""
    matched = trio.Event()

    def on_lines(stream: str, lines: Sequence[str]) -> None:
        if not matched.is_set() and any(pattern.search(line) for line in lines):
            matched.set()

    stop_listening = slot.watch_output(on_lines)
    try:
        await trio.sleep(delay)
        await matched.wait()
    finally:
        stop_listening()


async def _liveness(probe: Probe, spec: AgentSpec, slot: Monitored, record: HealthRecord) -> None:
    """Check every `period`; `failures` failed checks in a row end the run."""
    record.in_a_row = 0
    await trio.sleep(probe.initial_delay)
    async with open_check(probe, spec) as check:
        while True:
            started = trio.current_time()
            failed = await check()
            record.note("liveness", failed)
            if failed is not None and record.in_a_row >= probe.failures:
                reason = f"liveness: {failed} {_times(record.in_a_row)}"
                record.count("liveness", "ended")
                record.runs_ended = reason
                slot.fail(reason)
                return
            await trio.sleep_until(started + probe.period)


async def _watchdog(seconds: float, slot: Monitored, record: HealthRecord) -> None:
    """Fail the run once `seconds` pass with no heartbeat. Wakes once per deadline."""
    record.last_beat = trio.current_time()  # the clock starts when the agent is running
    while True:
        deadline = record.last_beat + seconds
        if trio.current_time() >= deadline:
            reason = f"watchdog: no heartbeat within {seconds:g}s"
            record.count("watchdog", "ended")
            record.runs_ended = reason
            slot.fail(reason)
            return
        await trio.sleep_until(deadline)


def _times(n: int) -> str:
    return {1: "once", 2: "twice", 3: "three times"}.get(n, f"{n} times")
