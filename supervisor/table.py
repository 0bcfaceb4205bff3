"""Work over the slot table that decides nothing: stopping agents in waves, waiting for
starts and for `after` dependencies, and the two out-of-queue stops (`fence`, `kill_all`).

The owner (`supervisor.owner`) decides what changes in the table; these functions carry
it out or wait on it. `fence` and `kill_all` are the exceptions to "only the owner task
touches slots": they only stop slots and kill process groups (both idempotent), never
add or remove one; docs/architecture.md says why each is safe.

May import: trio, `supervisor.core.plan`, `supervisor.slot`, `supervisor.logs`.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterable, Mapping, Sequence

import trio

from supervisor.core.plan import stop_waves
from supervisor.logs import log
from supervisor.manifest import AgentSpec
from supervisor.runners.containment import kill_every_run
from supervisor.slot import Slot


async def stop_slots(slots: Mapping[str, Slot], ids: Sequence[str]) -> None:
    """Stop `ids` in reverse `after` order, concurrently within each wave; return once
    each has stopped (its cleanup ran)."""
    specs = {i: slots[i].spec for i in ids}
    for wave in stop_waves(ids, specs):
        stopping = [slots[agent_id] for agent_id in wave]
        for slot in stopping:
            slot.stop()
        # They stop concurrently; waiting for each in turn needs no task per slot (a
        # task per slot was a tenth of the shutdown of 10,000 in-process agents). The
        # last stopped first: they end in about the order they were stopped, so by then
        # the others are gone too and the owner wakes about once, not once per slot.
        for slot in reversed(stopping):
            if slot.active:  # (a checkpoint for each of those already stopped is a loop turn)
                await slot.wait_stopped()
        await trio.lowlevel.checkpoint()


async def wait_started(slots: Mapping[str, Slot], ids: Iterable[str]) -> dict[str, str]:
    """Wait for the starts of `ids` to settle; return {id: reason} of those that failed."""
    failed: dict[str, str] = {}

    async def one(agent_id: str) -> None:
        slot = slots.get(agent_id)
        if slot is not None and slot.active:
            why = await slot.wait_started()
            if why is not None:
                failed[agent_id] = why

    async with trio.open_nursery() as nursery:
        for agent_id in ids:
            nursery.start_soon(one, agent_id)
    return failed


async def wait_after(
    slots: Mapping[str, Slot], table_changed: Callable[[], trio.Event], spec: AgentSpec
) -> str | None:
    """Wait until every agent `spec` is `after` is running (or exited ok); return why
    not (a dependency failed) or None. `table_changed()` is the event set at the table's
    next change (a slot added or removed)."""
    for dep in spec.after:
        while True:
            slot = slots.get(dep)
            if slot is None:
                await table_changed().wait()
                continue
            if slot.up:
                break
            if slot.state in ("failed", "exited"):
                return f"dependency {dep!r} failed"
            await slot.changed.wait()
    return None


def kill_all(slots: Iterable[Slot]) -> None:
    """SIGKILL every agent's processes now (a second SIGTERM, or a timeout): their groups,
    and every process that left its group (`supervisor.runners.containment`)."""
    kill_every_run()
    for slot in slots:
        if slot.pid is not None:
            try:
                os.killpg(slot.pid, signal.SIGKILL)
            except OSError:
                pass  # already gone


async def fence(slots: Sequence[Slot], deadline: float) -> None:
    """Stop `slots` by `deadline` (trio time), SIGKILLing what is left then; return
    once every one has stopped. Each counts as refused (`Slot.refused`): the owner
    launches it again once the placement allows it."""
    for slot in slots:
        slot.stop()
    with trio.move_on_at(deadline):
        for slot in slots:
            await slot.wait_stopped()
    kill_all(slots)
    for slot in slots:
        await slot.wait_stopped()
        if not slot.active:  # started again once allowed, like a refused start
            slot.refused = slot.refused or "stopped by a fence"
    log.info("cluster: %d agents stopped", len(slots))
