"""One slot's life under trio's MockClock: restarts, backoff, budget, timeouts, stops.

The runner here is a scripted agent kind (a real `Runner`): each start plays the next
step of a script, so the slot's decisions can be checked against exact trio times.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs
import trio
import trio.testing

from supervisor.manifest import AgentSpec, Backoff
from supervisor.runners import Hooks, Outcome
from supervisor.slot import Slot

from ..conftest import make_spec

NO_JITTER = Backoff(initial=1.0, factor=2.0, max=8.0, jitter=0.0)


@attrs.frozen
class Step:
    ready_after: float | None = 0.0  # None: never ready
    run_for: float | None = None  # None: until stopped
    outcome: Outcome = Outcome(code=1)


class Script:
    """A runner that plays `steps`, then runs forever; records what happened when."""

    def __init__(self, steps: Iterable[Step] = ()) -> None:
        self.steps = list(steps)
        self.starts: list[float] = []
        self.cleanups = 0

    async def __call__(self, spec: AgentSpec, hooks: Hooks) -> Outcome:
        step = self.steps.pop(0) if self.steps else Step(run_for=None)
        self.starts.append(trio.current_time())
        hooks.launched(None)
        try:
            if step.ready_after is not None:
                await trio.sleep(step.ready_after)
                hooks.ready()
            if step.run_for is None:
                await trio.sleep_forever()
            await trio.sleep(step.run_for)
            return step.outcome
        finally:
            self.cleanups += 1


async def wait_state(slot: Slot, *states: str) -> None:
    with trio.fail_after(1000):
        while slot.state not in states:
            await slot.changed.wait()


async def test_crash_loop_backs_off_then_fails(autojump_clock: trio.testing.MockClock) -> None:
    script = Script([Step(run_for=1)] * 10)
    slot = Slot(make_spec(backoff=NO_JITTER, max_restarts=3), script)
    async with trio.open_nursery() as nursery:
        slot.launch(nursery)
        await wait_state(slot, "failed")
    # runs of 1 s, then delays 1, 2, 4 between starts
    assert script.starts == [0, 2, 5, 10]
    assert slot.restarts == 3
    assert slot.reason == "exited with code 1; gave up after 3 restarts within 60s"
    assert [e.code for e in slot.exits] == [1, 1, 1, 1]


async def test_healthy_run_resets_backoff(autojump_clock: trio.testing.MockClock) -> None:
    steps = [Step(run_for=1), Step(run_for=1), Step(run_for=100), Step(run_for=1)]
    script = Script(steps)
    slot = Slot(make_spec(backoff=NO_JITTER, reset_after=60), script)
    async with trio.open_nursery() as nursery:
        slot.launch(nursery)
        with trio.fail_after(1000):
            while len(script.starts) < 5:
                await slot.changed.wait()
        slot.stop()
    # 0 run 1, wait 1; 2 run 1, wait 2; 5 run 100 (healthy), wait 1 (reset); 106 run 1, wait 2
    assert script.starts == [0, 2, 5, 106, 109]


async def test_on_failure_success_exits(autojump_clock: trio.testing.MockClock) -> None:
    script = Script([Step(run_for=5, outcome=Outcome(code=0))])
    slot = Slot(make_spec(), script)
    async with trio.open_nursery() as nursery:
        slot.launch(nursery)
        await wait_state(slot, "exited")
    assert slot.up
    assert slot.reason == "exited with code 0"


async def test_start_timeout_is_a_failed_start(autojump_clock: trio.testing.MockClock) -> None:
    script = Script([Step(ready_after=None)])
    slot = Slot(make_spec(start_timeout=3, restart="never"), script)
    async with trio.open_nursery() as nursery:
        slot.launch(nursery)
        await wait_state(slot, "failed")
        assert trio.current_time() == 3
    assert slot.reason == "start timeout: not ready within 3s"
    assert script.cleanups == 1


async def test_wait_started_reports_failed_first_start(
    autojump_clock: trio.testing.MockClock,
) -> None:
    script = Script([Step(ready_after=None, run_for=1, outcome=Outcome(error="boom"))])
    slot = Slot(make_spec(ready="notify", backoff=NO_JITTER), script)
    async with trio.open_nursery() as nursery:
        slot.launch(nursery)
        assert await slot.wait_started() == "boom"
        assert slot.reason == "boom; restart in 1.00s"
        slot.stop()


async def test_stop_during_backoff_is_immediate(autojump_clock: trio.testing.MockClock) -> None:
    script = Script([Step(run_for=1)])
    slot = Slot(make_spec(backoff=Backoff(initial=100, jitter=0)), script)
    async with trio.open_nursery() as nursery:
        slot.launch(nursery)
        await wait_state(slot, "backoff")
        slot.stop()
        await slot.wait_stopped()
        assert trio.current_time() == 1
    assert slot.state == "stopped"
    assert len(script.starts) == 1


async def test_stop_while_starting_cleans_up_once(autojump_clock: trio.testing.MockClock) -> None:
    script = Script([Step(ready_after=10)])
    slot = Slot(make_spec(), script)
    async with trio.open_nursery() as nursery:
        slot.launch(nursery)
        await trio.sleep(1)
        assert slot.state == "starting"
        slot.stop()
        await slot.wait_stopped()
    assert slot.state == "stopped"
    assert script.cleanups == 1


async def test_restart_after_stop_keeps_history(autojump_clock: trio.testing.MockClock) -> None:
    script = Script([Step(run_for=1)])
    slot = Slot(make_spec(backoff=NO_JITTER), script)
    async with trio.open_nursery() as nursery:
        slot.launch(nursery)
        await wait_state(slot, "backoff")
        await wait_state(slot, "running")
        slot.stop()
        await slot.wait_stopped()
        slot.launch(nursery)
        assert await slot.wait_started() is None
        slot.stop()
    assert slot.restarts == 1
    # The exit, then the two runs ended by a stop: recorded too, as stopped.
    assert [(e.code, e.stopped) for e in slot.exits] == [(1, False), (None, True), (None, True)]
    assert len(script.starts) == 3


async def test_wait_stopped_ends_with_its_own_life(autojump_clock: trio.testing.MockClock) -> None:
    # A waiter that runs only after the slot was launched again still returns: it waited
    # for the end of the life under way when it began, not the next one's.
    script = Script()
    nurseries: list[trio.Nursery] = []

    def launch_again(slot: Slot) -> None:  # at the end of the first life, synchronously
        if not slot.active and len(script.starts) == 1:
            slot.launch(nurseries[0])

    slot = Slot(make_spec(), script, on_change=launch_again)
    returned: list[float] = []

    async def waiter() -> None:
        await slot.wait_stopped()
        returned.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nurseries.append(nursery)
        slot.launch(nursery)
        await wait_state(slot, "running")
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        slot.stop()
        with trio.fail_after(1000):
            while len(script.starts) < 2:
                await slot.changed.wait()
        await trio.testing.wait_all_tasks_blocked()
        assert returned == [0]
        slot.stop()
    assert slot.active is False


async def test_stop_before_the_life_task_ran(autojump_clock: trio.testing.MockClock) -> None:
    script = Script()
    slot = Slot(make_spec(), script)
    async with trio.open_nursery() as nursery:
        slot.launch(nursery)
        slot.stop()
        await slot.wait_stopped()
    assert (slot.state, slot.reason, slot.active) == ("stopped", "stopped on request", False)
    assert script.cleanups == len(script.starts)


async def test_disabled_slot_is_not_started() -> None:
    slot = Slot(make_spec(enabled=False), Script())
    assert (slot.state, slot.reason, slot.active) == ("stopped", "disabled", False)
