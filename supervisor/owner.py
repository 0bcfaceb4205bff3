"""The owner: one task holds the slot table and converges it to the desired agents.

Reload, load, unload, start, stop, restart and shutdown are requests sent to the owner
over a memory channel, executed one at a time, each answered to its caller. Nothing else
changes `slots`, so there are no locks and no check-then-insert races: a request for an
id that is mid-start or mid-stop is answered by the owner, which knows. The few places
that touch slots from elsewhere (`fence`, `kill_all`) are listed, with why each is safe,
in docs/architecture.md.

Readers (the API, metrics) read `slots` and `Slot.statistics()` directly: reads are sync
and the table only changes between the owner's awaits.

What is desired is a pure function of the manifest and the API overlay
(`supervisor.overlay.desired_state`); where agents run, and whether one may start now,
the placement says (`supervisor.placement`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any

import trio

from supervisor import manifest as mf
from supervisor import table as slot_table
from supervisor.control import ControlRequests
from supervisor.core.plan import Plan, plan
from supervisor.events import EventBus
from supervisor.health.lag import LoopLag
from supervisor.logs import log
from supervisor.manifest import AgentSpec, Manifest, ManifestError, Source
from supervisor.overlay import Desired, Overlay, StateNotSaved, desired_state
from supervisor.placement import LocalPlacement, Placement
from supervisor.requests import Conflict, NotFound, ReloadResult, ShuttingDown, StartFailed
from supervisor.requests import Reply as _Reply
from supervisor.runners import Runner
from supervisor.runners.dispatch import make_runner
from supervisor.slot import Slot

__all__ = [
    "Conflict",
    "NotFound",
    "ReloadResult",
    "ShuttingDown",
    "StartFailed",
    "StateNotSaved",
    "Supervisor",
]

# Manifests larger than this are read in a worker thread: parsing 10,000 agents takes
# ~100 ms that the loop should not be blocked for; small ones are not worth the hop.
BIG_MANIFEST = 256 * 1024

_Op = Callable[[], Awaitable[Any]]


class Supervisor(ControlRequests):
    """Owns the slot table. Create it, then run `run()` in a nursery.

    Args:
      manifest: the validated manifest it starts with.
      runner: runs one agent once; `make_runner()` unless testing a fake kind.
      placement: which agents run here and when they may start (`supervisor.placement`):
        `LocalPlacement` (all, always) unless this supervisor shares the manifest with
        others (`supervisor.cluster.placement.ClusterPlacement`).
    """

    def __init__(
        self,
        manifest: Manifest,
        runner: Runner | None = None,
        placement: Placement | None = None,
    ) -> None:
        self.manifest = manifest
        self.placement: Placement = placement or LocalPlacement()
        self.slots: dict[str, Slot] = {}
        self.overlay = Overlay(manifest.settings.state_file)  # API agents, as sent
        self.exit_code = 0
        self.exit_message = ""
        self.reloads_ok = 0
        self.reloads_failed = 0
        self.last_reload: float | None = None  # wall time
        self.table_changed = trio.Event()
        self.events = EventBus()  # every change, once (docs/api.md, GET /events)
        self.loop_lag = LoopLag(self.slots)  # installed with the first in-process agent
        self._runner = runner or make_runner()
        self._new_slot = partial(  # its hooks bound once, not a bound method per slot each
            Slot,
            runner=self._runner,
            wait_after=self._wait_after,
            on_change=self._on_slot_change,
            may_start=self.placement.may_start,
            events=self.events,
        )
        self._send, self._recv = trio.open_memory_channel[tuple[_Op, _Reply]](math.inf)
        self._reload_replies: list[_Reply] | None = None
        self._reconcile_queued = False
        self._shutting_down = False
        self._nursery: trio.Nursery | None = None

    # -- the owner task ---------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> int:
        """Start the manifest's agents, serve requests until shutdown; return the exit code."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self.placement.shared_overlay is None and self.overlay.path is not None:
                await trio.to_thread.run_sync(self.overlay.load, self.manifest)  # reads folders
            await self._converge(await self._desired(self.manifest))
            task_status.started()
            async for op, reply in self._recv:
                try:
                    reply.set(await op())
                except Exception as exc:  # answered to the caller, who reports it
                    reply.fail(exc)
                if self._shutting_down:
                    break
            self._refuse_pending()
        for slot in self.slots.values():
            slot.removed()  # followers of their output end, with their last lines
        self.events.close()
        self.loop_lag.close()
        return self.exit_code

    async def _call(self, op: _Op) -> Any:
        if self._shutting_down:
            raise ShuttingDown("the supervisor is shutting down")
        reply = _Reply()
        self._send.send_nowait((op, reply))
        return await reply.wait()

    def _refuse_pending(self) -> None:
        self._send.close()
        while True:
            try:
                _, reply = self._recv.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            reply.fail(ShuttingDown("the supervisor is shutting down"))
        for reply in self._reload_replies or ():
            reply.fail(ShuttingDown("the supervisor is shutting down"))

    # -- reload -----------------------------------------------------------------------

    def request_reload(self) -> _Reply:
        """Ask for a reconcile with the manifest file. Coalesced: requests that arrive
        while one is queued share its pass; those during a pass get one more pass."""
        reply = _Reply()
        if self._shutting_down:
            reply.fail(ShuttingDown("the supervisor is shutting down"))
        elif self._reload_replies is None:
            self._reload_replies = [reply]
            self._send.send_nowait((self._do_reload, _Reply()))
        else:
            self._reload_replies.append(reply)
        return reply

    async def reload(self, *, wait: bool = True) -> ReloadResult:
        """Reconcile now; with `wait`, return once every (re)started agent is running
        or failed to start. Raises ManifestError (nothing changed) if the file is invalid."""
        result: ReloadResult = await self.request_reload().wait()
        if wait:
            await self.wait_started(result.started + result.restarted)
        return result

    async def wait_started(self, ids: tuple[str, ...]) -> dict[str, str]:
        """Wait for the starts of `ids` to settle; return {id: reason} of those that failed."""
        return await slot_table.wait_started(self.slots, ids)

    async def _do_reload(self) -> None:
        """One reload pass; every caller waiting on it is answered, whatever happens."""
        replies, self._reload_replies = self._reload_replies or [], None
        try:
            result = await self._reload_once()
        except BaseException as exc:
            self.reloads_failed += 1
            error: Exception = ShuttingDown("the supervisor is shutting down")
            if isinstance(exc, ManifestError):
                error = exc
            elif isinstance(exc, Exception):  # any other failure is answered too
                why = f"{self.manifest.path}: reload failed: {type(exc).__name__}: {exc}"
                error = ManifestError([why])
            log.error("reload failed, nothing changed:\n%s", error)
            errors = error.errors if isinstance(error, ManifestError) else [str(error)]
            self.events.publish("reload", {"ok": False, "errors": errors})
            for reply in replies:
                reply.fail(error)
            if not isinstance(exc, Exception):
                raise
            return
        for reply in replies:
            reply.set(result)

    async def _reload_once(self) -> ReloadResult:
        new = await self._read_manifest()
        desired = await self._desired(new)  # ManifestError: refused, nothing changed
        self.manifest = new  # accepted: from here on the new manifest is in force
        self.loop_lag.set_threshold(new.settings.loop_lag_warning)
        self.overlay.drop(desired.shadowed)
        p = await self._converge(desired)
        self.reloads_ok += 1
        self.last_reload = time.time()
        result = ReloadResult(
            started=p.start, stopped=p.stop, restarted=p.restart, unchanged=p.unchanged
        )
        log.info(
            "reloaded: %d started, %d stopped, %d restarted, %d unchanged",
            len(p.start),
            len(p.stop),
            len(p.restart),
            len(p.unchanged),
        )
        self.events.publish("reload", {"ok": True, "result": result})
        return result

    async def _converge(self, desired: Desired) -> Plan:
        """Apply `plan(live, desired)` over the agents placed here; return it as applied.

        Around the placement (`supervisor.placement`): stop, then `settle` (which
        releases what the stopped agents held and acquires what the starts need), then
        start what it allows. A slot whose last start the placement refused is launched
        again when it now may start.
        """
        placed, sources = self.placement.placed(desired.specs), desired.sources
        live = {i: s.spec for i, s in self.slots.items()}
        p = plan(live, placed)
        await self._stop_slots(p.stop + p.restart)
        for agent_id in p.stop:
            self._remove(agent_id)
        for agent_id in p.unchanged:
            self.slots[agent_id].source = sources[agent_id]
        p = await self.placement.settle(p)
        await self._start_allowed(p.start + p.restart, placed, sources)
        self._relaunch_refused(p.unchanged)
        return p

    async def _start_allowed(
        self, ids: tuple[str, ...], desired: Mapping[str, AgentSpec], sources: Mapping[str, Source]
    ) -> None:
        """Start the agents of `ids` that may start, `placement.start_group` at a time.

        Each group is checked with `may_start` with no await before it starts; the
        checkpoint between groups keeps the loop responsive (see `supervisor.placement`).
        """
        group = self.placement.start_group
        if group <= 0:
            self._apply_starts(ids, desired, sources)
            return
        may_start = self.placement.may_start
        for first in range(0, len(ids), group):
            allowed = tuple(i for i in ids[first : first + group] if may_start(i) is None)
            self._apply_starts(allowed, desired, sources)
            await trio.lowlevel.checkpoint()

    def _relaunch_refused(self, ids: tuple[str, ...]) -> None:
        """Launch again the unchanged slots whose last start was refused, if now allowed."""
        assert self._nursery is not None
        for agent_id in ids:
            slot = self.slots[agent_id]
            refused = slot.refused is not None and not slot.active and slot.spec.enabled
            if refused and self.placement.may_start(agent_id) is None:
                slot.launch(self._nursery)

    def request_reconcile(self) -> None:
        """Converge again to the manifest already loaded (no file read): the cluster's
        members or shared overlay changed. Sync; coalesced with any queued reconcile
        or reload (which converges with the cluster as it then is)."""
        if self._shutting_down or self._reconcile_queued or self._reload_replies is not None:
            return
        self._reconcile_queued = True
        self._send.send_nowait((self._do_reconcile, _Reply()))

    async def _do_reconcile(self) -> None:
        self._reconcile_queued = False
        await self._converge(await self._desired(self.manifest))

    async def fence(self, deadline: float) -> None:
        """Stop every agent by `deadline` (trio time), SIGKILLing what is left then.

        For a cluster member that lost its lease: once it may have expired, others start
        these agents. Called by the member's task, not through the owner's queue, since
        it must not wait behind a request in progress; it only stops slots (idempotent)
        and kills their groups. The placement no longer allows any start, so the owner
        starts nothing meanwhile. The slots it stopped count as refused: the first
        reconcile after the member joined again claims their keys and starts them again.
        """
        await slot_table.fence([slot for slot in self.slots.values() if slot.active], deadline)
        self.request_reconcile()

    async def _read_manifest(self) -> Manifest:
        """Load the manifest file. A big one, or one that reads more files (includes,
        folder agents: docs/manifest.md, "Limits"), in a worker thread, to keep the loop
        free; small ones are not worth the hop."""
        path = self.manifest.path
        try:
            big = path.stat().st_size > BIG_MANIFEST
        except OSError:
            big = False  # load() reports the file's absence
        if big:
            return await trio.to_thread.run_sync(mf.load, path)
        parsed = mf.parse(path)
        if parsed.reads_files:
            return await trio.to_thread.run_sync(mf.load, parsed)
        return mf.load(parsed)

    async def _desired(self, m: Manifest) -> Desired:
        """What `m` and the overlay in force (the placement's shared one, or ours) want.

        In a worker thread if an API agent is a folder agent, whose files it reads."""
        shared = self.placement.shared_overlay
        if shared is not None:
            compute = partial(desired_state, m, dict(shared), shared=True)
        else:
            compute = partial(desired_state, m, self.overlay.tables, label=self.overlay.label)
        tables = compute.args[1]
        if any("path" in table for table in tables.values()):
            return await trio.to_thread.run_sync(compute)
        return compute()

    # -- starting and stopping slots --------------------------------------------------

    def _apply_starts(
        self, ids: tuple[str, ...], desired: Mapping[str, AgentSpec], sources: Mapping[str, Source]
    ) -> None:
        for agent_id in ids:
            self._add(desired[agent_id], sources[agent_id])
        self._table_changed()  # once for them all (`_add` does not): nobody ran in between

    def _add(self, spec: AgentSpec, source: Source) -> Slot:
        assert self._nursery is not None
        slot = self._new_slot(spec, source=source)
        previous = self.slots.get(spec.id)
        if previous is not None:  # restarted by a reload: its recent output goes on
            slot.keep_output_of(previous)
        self.slots[spec.id] = slot
        if spec.kind == "in-process":
            self.loop_lag.watch(self.manifest.settings.loop_lag_warning)
        if spec.enabled:
            slot.launch(self._nursery)
        return slot

    def _remove(self, agent_id: str) -> None:
        self.slots.pop(agent_id).removed()
        self.events.publish("removed", {"id": agent_id})

    async def _stop_slots(self, ids: tuple[str, ...] | list[str]) -> None:
        await slot_table.stop_slots(self.slots, ids)

    async def _wait_after(self, spec: AgentSpec) -> str | None:
        return await slot_table.wait_after(self.slots, lambda: self.table_changed, spec)

    def _table_changed(self) -> None:
        self.table_changed.set()
        self.table_changed = trio.Event()

    def _on_slot_change(self, slot: Slot) -> None:
        if (
            slot.state == "failed"
            and slot.spec.critical
            and not self._shutting_down
            and not self.exit_message
            and self.slots.get(slot.spec.id) is slot
        ):
            self._critical_failure(slot)

    def _critical_failure(self, slot: Slot) -> None:
        self.exit_code = 3
        self.exit_message = f"critical agent {slot.spec.id!r} failed: {slot.reason}"
        log.error("%s; shutting down", self.exit_message)
        self.request_shutdown()

    # -- shutdown ---------------------------------------------------------------------

    def request_shutdown(self) -> None:
        """Stop every agent (reverse `after` order, within shutdown_timeout), then end
        `run()`. Sync and idempotent; the second call does not force (see `kill_all`)."""
        if not self._shutting_down:
            self._send.send_nowait((self._do_shutdown, _Reply()))

    async def _do_shutdown(self) -> None:
        self._shutting_down = True
        self.events.publish("shutdown", {"reason": self.exit_message or "requested"})
        timeout = self.manifest.settings.shutdown_timeout
        log.info("stopping %d agents (within %gs)", len(self.slots), timeout)
        with trio.move_on_after(timeout) as scope:
            await self._stop_slots(list(self.slots))
        if scope.cancelled_caught:
            log.error("shutdown_timeout (%gs) passed: killing what is left", timeout)
            self.kill_all()
            for slot in self.slots.values():
                await slot.wait_stopped()

    def kill_all(self) -> None:
        """SIGKILL every agent's processes now (a second SIGTERM, or a timeout)."""
        slot_table.kill_all(self.slots.values())
