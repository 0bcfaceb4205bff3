"""The owner: one task holds the slot table and converges it to the desired agents.

Reload, load, unload, start, stop, restart and shutdown are requests sent to the owner
over a memory channel, executed one at a time, each answered to its caller. Nothing else
changes `slots`, so there are no locks and no check-then-insert races: a request for an
id that is mid-start or mid-stop is answered by the owner, which knows.

Readers (the API, metrics) read `slots` and `Slot.statistics()` directly: reads are sync
and the table only changes between the owner's awaits.
"""

from __future__ import annotations

import math
import os
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import trio

from supervisor import manifest as mf
from supervisor import statefile
from supervisor.core.plan import Plan, plan, stop_waves
from supervisor.logs import log
from supervisor.manifest import AgentSpec, Manifest, ManifestError, Source
from supervisor.placement import LocalPlacement, Placement
from supervisor.runners import Runner
from supervisor.runners.dispatch import make_runner
from supervisor.slot import Slot

TERMINATION_LOG = Path("/dev/termination-log")
# Manifests larger than this are read in a worker thread: parsing 10,000 agents takes
# ~100 ms that the loop should not be blocked for; small ones are not worth the hop.
BIG_MANIFEST = 256 * 1024


class NotFound(LookupError):
    """No agent has that id."""


class Conflict(Exception):
    """The request clashes with the agent's current state or origin."""


class StartFailed(Exception):
    """An agent loaded over the API failed its first start; nothing was kept."""


class StateNotSaved(StartFailed):
    """The state file could not be written: an agent loaded over the API is not kept."""


class ShuttingDown(Exception):
    """The supervisor is stopping and takes no more requests."""


@attrs.frozen
class ReloadResult:
    started: tuple[str, ...]
    stopped: tuple[str, ...]
    restarted: tuple[str, ...]
    unchanged: tuple[str, ...]


class _Reply:
    """A one-shot answer a caller waits for."""

    def __init__(self) -> None:
        self._event = trio.Event()
        self._value: Any = None
        self._error: BaseException | None = None

    def set(self, value: Any) -> None:
        self._value = value
        self._event.set()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._event.set()

    async def wait(self) -> Any:
        await self._event.wait()
        if self._error is not None:
            raise self._error
        return self._value


_Op = Callable[[], Awaitable[Any]]


class Supervisor:
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
        self.overlay: dict[str, dict[str, Any]] = {}  # API agents: their tables, as sent
        self.exit_code = 0
        self.exit_message = ""
        self.reloads_ok = 0
        self.reloads_failed = 0
        self.last_reload: float | None = None  # wall time
        self.table_changed = trio.Event()
        self._runner = runner or make_runner()
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
            if self.placement.shared_overlay is None:
                self._load_state_file()
            desired, sources = await self._desired(self.manifest)
            await self._converge(desired, sources)  # no checkpoint with nothing to stop
            task_status.started()
            async for op, reply in self._recv:
                try:
                    reply.set(await op())
                except Exception as exc:  # answered to the caller, who reports it
                    reply.fail(exc)
                if self._shutting_down:
                    break
            self._refuse_pending()
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
        failed: dict[str, str] = {}

        async def one(agent_id: str) -> None:
            slot = self.slots.get(agent_id)
            if slot is not None and slot.active:
                why = await slot.wait_started()
                if why is not None:
                    failed[agent_id] = why

        async with trio.open_nursery() as nursery:
            for agent_id in ids:
                nursery.start_soon(one, agent_id)
        return failed

    async def _do_reload(self) -> None:
        replies, self._reload_replies = self._reload_replies or [], None
        try:
            new = await self._read_manifest()
            desired, sources = await self._desired(new)
        except ManifestError as exc:
            self.reloads_failed += 1
            log.error("reload failed, nothing changed:\n%s", exc)
            for reply in replies:
                reply.fail(exc)
            return
        self.manifest = new
        p = await self._converge(desired, sources)
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
        for reply in replies:
            reply.set(result)

    async def _converge(self, desired: dict[str, AgentSpec], sources: Mapping[str, Source]) -> Plan:
        """Apply `plan(live, desired)` over the agents placed here; return it as applied.

        Around the placement (`supervisor.placement`): stop, then `settle` (which
        releases what the stopped agents held and acquires what the starts need), then
        start what it allows. A slot whose last start the placement refused is launched
        again when it now may start.
        """
        placed = self.placement.placed(desired)
        live = {i: s.spec for i, s in self.slots.items()}
        p = plan(live, placed)
        await self._stop_slots(p.stop + p.restart)
        for agent_id in p.stop:
            del self.slots[agent_id]
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
        desired, sources = await self._desired(self.manifest)
        await self._converge(desired, sources)

    async def fence(self, deadline: float) -> None:
        """Stop every agent by `deadline` (trio time), SIGKILLing what is left then.

        For a cluster member that lost its lease: once it may have expired, others start
        these agents. Called by the member's task, not through the owner's queue, since
        it must not wait behind a request in progress; it only stops slots (idempotent)
        and kills their groups. The cluster no longer holds any key, so the owner starts
        nothing meanwhile. The slots it stopped count as refused: the first reconcile
        after the member joined again claims their keys and starts them again.
        """
        slots = [slot for slot in self.slots.values() if slot.active]
        for slot in slots:
            slot.stop()
        with trio.move_on_at(deadline):
            for slot in slots:
                await slot.wait_stopped()
        self.kill_all()
        for slot in slots:
            await slot.wait_stopped()
            if not slot.active:  # started again once allowed, like a refused start
                slot.refused = slot.refused or "stopped by a fence"
        log.info("cluster: %d agents stopped", len(slots))
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

    async def _desired(self, m: Manifest) -> tuple[dict[str, AgentSpec], dict[str, Source]]:
        """The manifest's agents plus the API overlay's (the manifest wins an id)."""
        shared = self.placement.shared_overlay
        if shared is not None:  # e.g. the cluster's, in etcd: loads are not ours to keep
            known = {**m.agents, **shared}
            return _shared_desired(
                m.agents,
                shared,
                lambda agent_id, table: self._spec_from_table(agent_id, table, known),
            )
        desired = dict(m.agents)
        sources: dict[str, Source] = dict.fromkeys(desired, "manifest")
        errors: list[str] = []
        for agent_id, table in list(self.overlay.items()):
            if agent_id in desired:
                log.warning("%s: now declared in the manifest; the API's copy is dropped", agent_id)
                del self.overlay[agent_id]
                self._save_state_or_log()
                continue
            try:
                desired[agent_id] = await self._spec_off_loop(
                    agent_id, table, known=desired, label=self._state_label
                )
                sources[agent_id] = "api"
            except ManifestError as exc:
                errors.extend(exc.errors)
        if errors:
            raise ManifestError(errors)
        return desired, sources

    def _spec_from_table(
        self,
        agent_id: str | None,
        table: dict[str, Any],
        known: Mapping[str, Any],
        label: str = "request",
    ) -> AgentSpec:
        """Validate an API agent's table; errors are located in `label` (the request's
        body, or the state file it was read back from)."""
        return mf.agent_from_table(
            agent_id,
            table,
            base=self.manifest.path.parent,
            defaults=self.manifest.defaults,
            known_ids=list(known),
            label=label,
        )

    async def _spec_off_loop(
        self,
        agent_id: str | None,
        table: dict[str, Any],
        known: Mapping[str, Any],
        label: str = "request",
    ) -> AgentSpec:
        """`_spec_from_table`, in a worker thread for a folder agent, whose files it reads."""
        check = partial(self._spec_from_table, agent_id, table, dict.fromkeys(known), label)
        if "path" in table:
            return await trio.to_thread.run_sync(check)
        return check()

    @property
    def _state_label(self) -> str:
        return str(self.manifest.settings.state_file or "the API overlay")

    # -- starting and stopping slots --------------------------------------------------

    def _apply_starts(
        self, ids: tuple[str, ...], desired: Mapping[str, AgentSpec], sources: Mapping[str, Source]
    ) -> None:
        for agent_id in ids:
            self._add(desired[agent_id], sources[agent_id])

    def _add(self, spec: AgentSpec, source: Source) -> Slot:
        assert self._nursery is not None
        slot = Slot(
            spec,
            self._runner,
            source=source,
            wait_after=self._wait_after,
            on_change=self._on_slot_change,
            may_start=self.placement.may_start,
        )
        self.slots[spec.id] = slot
        if spec.enabled:
            slot.launch(self._nursery)
        self._table_changed()
        return slot

    async def _stop_slots(self, ids: tuple[str, ...] | list[str]) -> None:
        """Stop `ids` in reverse `after` order, concurrently within each wave."""
        specs = {i: self.slots[i].spec for i in ids}
        for wave in stop_waves(ids, specs):
            async with trio.open_nursery() as nursery:
                for agent_id in wave:
                    slot = self.slots[agent_id]
                    slot.stop()
                    nursery.start_soon(slot.wait_stopped)

    async def _wait_after(self, spec: AgentSpec) -> str | None:
        """Wait until every agent `spec` is `after` is running (or exited ok)."""
        for dep in spec.after:
            while True:
                slot = self.slots.get(dep)
                if slot is None:
                    await self.table_changed.wait()
                    continue
                if slot.up:
                    break
                if slot.state in ("failed", "exited"):
                    return f"dependency {dep!r} failed"
                await slot.changed.wait()
        return None

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
        if TERMINATION_LOG.exists():  # Kubernetes' termination message; never create it
            try:
                TERMINATION_LOG.write_text(self.exit_message + "\n")
            except OSError:
                pass  # not writable: stdout has it
        self.request_shutdown()

    # -- control requests -------------------------------------------------------------

    async def load(self, table: dict[str, Any]) -> Slot:
        """Load an agent (`table` is its keys plus optional "id"); return once running.

        Raises ManifestError (invalid), Conflict (id taken), StartFailed (first start
        failed: nothing kept). If the caller goes away, the load still completes or is
        undone whole by the owner.
        """
        done: _Reply = await self._call(partial(self._do_load, table))
        slot: Slot = await done.wait()
        return slot

    async def _do_load(self, table: dict[str, Any]) -> _Reply:
        body = dict(table)
        agent_id = body.pop("id", None)
        if agent_id is not None and not isinstance(agent_id, str):
            raise ManifestError([f"request: id: must be a string, not {agent_id!r}"])
        spec = await self._spec_off_loop(agent_id, body, known=self.slots)
        if spec.id in self.slots:
            raise Conflict(f"agent {spec.id!r} already exists")
        slot = self._add(spec, "api")
        done = _Reply()
        assert self._nursery is not None
        self._nursery.start_soon(self._settle_load, slot, body, done)
        return done

    async def _settle_load(self, slot: Slot, table: dict[str, Any], done: _Reply) -> None:
        why = await slot.wait_started() if slot.active else None
        error: StartFailed | None = None
        if why is None:
            self.overlay[slot.spec.id] = table
            try:
                self._save_state()
            except StateNotSaved as exc:
                del self.overlay[slot.spec.id]
                error = exc
            else:
                log.info("%s: loaded over the API", slot.spec.id)
                done.set(slot)
                return
        try:
            await self._call(partial(self._forget, slot))
        except ShuttingDown:
            pass
        done.fail(error or StartFailed(f"agent {slot.spec.id!r} failed to start: {why}"))

    async def _forget(self, slot: Slot) -> None:
        if self.slots.get(slot.spec.id) is slot:
            await self._stop_slots([slot.spec.id])
            del self.slots[slot.spec.id]
            self._table_changed()

    async def unload(self, agent_id: str) -> None:
        """Stop and remove an agent loaded over the API; return after its cleanup ran."""
        await self._call(partial(self._do_unload, agent_id))

    async def _do_unload(self, agent_id: str) -> None:
        slot = self._get(agent_id)
        if slot.source == "manifest":
            raise Conflict(
                f"agent {agent_id!r} is declared in {self.manifest.path}; remove it there and reload"
            )
        await self._forget(slot)
        if self.overlay.pop(agent_id, None) is not None:
            self._save_state_or_log()
        log.info("%s: unloaded over the API", agent_id)

    async def start(self, agent_id: str) -> Slot:
        """Start a stopped, exited or failed agent; return once its start settled."""
        slot: Slot = await self._call(partial(self._do_start, agent_id))
        await slot.wait_started()
        return slot

    async def _do_start(self, agent_id: str) -> Slot:
        slot = self._get(agent_id)
        why = self.placement.may_start(agent_id)
        if why is not None:
            raise Conflict(f"agent {agent_id!r} may not start here now: {why}; retry later")
        if not slot.active:
            assert self._nursery is not None
            slot.launch(self._nursery)
        return slot

    async def stop(self, agent_id: str) -> Slot:
        """Stop an agent (it stays declared, ``stopped``); return after its cleanup ran."""
        slot: Slot = await self._call(partial(self._do_stop, agent_id))
        return slot

    async def _do_stop(self, agent_id: str) -> Slot:
        slot = self._get(agent_id)
        await self._stop_slots([agent_id])
        return slot

    async def restart(self, agent_id: str) -> Slot:
        """Stop then start an agent; return once the new start settled."""
        slot: Slot = await self._call(partial(self._do_restart, agent_id))
        await slot.wait_started()
        return slot

    async def _do_restart(self, agent_id: str) -> Slot:
        await self._do_stop(agent_id)
        return await self._do_start(agent_id)

    def _get(self, agent_id: str) -> Slot:
        try:
            return self.slots[agent_id]
        except KeyError:
            raise NotFound(f"no agent {agent_id!r}") from None

    # -- shutdown ---------------------------------------------------------------------

    def request_shutdown(self) -> None:
        """Stop every agent (reverse `after` order, within shutdown_timeout), then end
        `run()`. Sync and idempotent; the second call does not force (see `kill_all`)."""
        if not self._shutting_down:
            self._send.send_nowait((self._do_shutdown, _Reply()))

    async def _do_shutdown(self) -> None:
        self._shutting_down = True
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
        """SIGKILL every agent's process group now (a second SIGTERM, or a timeout)."""
        for slot in self.slots.values():
            if slot.pid is not None:
                try:
                    os.killpg(slot.pid, signal.SIGKILL)
                except OSError:
                    pass  # already gone

    # -- the API overlay's state file -------------------------------------------------

    def _load_state_file(self) -> None:
        path = self.manifest.settings.state_file
        if path is None or not path.exists():
            return
        try:
            tables = statefile.read(path)
            known = {**self.manifest.agents, **tables}
            for agent_id, table in tables.items():
                if agent_id not in self.manifest.agents:  # the manifest wins
                    self._spec_from_table(agent_id, table, known, label=str(path))
                    self.overlay[agent_id] = table
        except ManifestError as exc:
            self.overlay.clear()
            statefile.set_aside(path, exc)

    def _save_state(self) -> None:
        """Write the overlay to `state_file` (atomically).

        Raises:
          StateNotSaved: the file could not be written (nothing was replaced).
        """
        path = self.manifest.settings.state_file
        if path is None:
            return
        try:
            statefile.write(path, self.overlay)
        except OSError as exc:
            raise StateNotSaved(f"cannot write the state file {path}: {exc.strerror or exc}")

    def _save_state_or_log(self) -> None:
        """`_save_state` where the change stands anyway (an unload): log a failure."""
        try:
            self._save_state()
        except StateNotSaved as exc:
            log.error("%s; it will not reflect the last change", exc)


def _shared_desired(
    agents: Mapping[str, AgentSpec],
    overlay: Mapping[str, dict[str, Any]],
    spec: Callable[[str, dict[str, Any]], AgentSpec],
) -> tuple[dict[str, AgentSpec], dict[str, Source]]:
    """The manifest's `agents` plus a shared overlay's, each made a spec by `spec`.

    The manifest wins an id. An overlay entry invalid here is left out with a warning
    rather than refused: another supervisor wrote it, and it must not keep this one from
    converging.
    """
    desired = dict(agents)
    sources: dict[str, Source] = dict.fromkeys(desired, "manifest")
    for agent_id, table in overlay.items():
        if agent_id in desired:
            continue
        try:
            desired[agent_id] = spec(agent_id, table)
            sources[agent_id] = "api"
        except ManifestError as exc:
            log.warning("shared overlay: %s left out: %s", agent_id, "; ".join(exc.errors))
    return desired, sources
