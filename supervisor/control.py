"""The owner's control requests: load, unload, start, stop and restart one agent.

A mixin of `supervisor.owner.Supervisor`, apart only to keep each file readable: every
public method here sends a request to the owner's queue (`_call`), and the `_do_*` ones
run in the owner task, one at a time, like reloads. An agent loaded over the API is kept
(in the overlay and its state file, `supervisor.overlay`) only once its first start has
succeeded, and by the owner task: a helper task waits for the start, then asks.

May import: trio, `supervisor.manifest`, `supervisor.overlay`, `supervisor.placement`,
`supervisor.requests`, `supervisor.slot`, `supervisor.logs`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import trio

from supervisor.logs import log
from supervisor.manifest import AgentSpec, Manifest, ManifestError, Source
from supervisor.overlay import Overlay, StateNotSaved, api_spec, storable
from supervisor.placement import Placement
from supervisor.requests import Conflict, NotFound, Reply, ShuttingDown, StartFailed
from supervisor.slot import Slot


class ControlRequests:
    """Load, unload, start, stop, restart (see the module's docstring)."""

    manifest: Manifest
    placement: Placement
    slots: dict[str, Slot]
    overlay: Overlay
    _nursery: trio.Nursery | None

    # What the owner provides.
    async def _call(self, op: Callable[[], Awaitable[Any]]) -> Any:
        raise NotImplementedError

    def _add(self, spec: AgentSpec, source: Source) -> Slot:
        raise NotImplementedError

    async def _stop_slots(self, ids: tuple[str, ...] | list[str]) -> None:
        raise NotImplementedError

    def _table_changed(self) -> None:
        raise NotImplementedError

    def _remove(self, agent_id: str) -> None:
        raise NotImplementedError

    async def load(self, table: dict[str, Any]) -> Slot:
        """Load an agent (`table` is its keys plus optional "id"); return once running.

        Raises ManifestError (invalid), Conflict (id taken), StartFailed (first start
        failed: nothing kept). If the caller goes away, the load still completes or is
        undone whole by the owner.
        """
        done: Reply = await self._call(partial(self._do_load, table))
        slot: Slot = await done.wait()
        return slot

    async def _do_load(self, table: dict[str, Any]) -> Reply:
        body = dict(table)
        agent_id = body.pop("id", None)
        if agent_id is not None and not isinstance(agent_id, str):
            raise ManifestError([f"request: id: must be a string, not {agent_id!r}"])
        body = storable(agent_id, body)  # what the state file will hold: checked first
        check = partial(api_spec, self.manifest, agent_id, body, list(self.slots))
        # A folder agent's files are read: off the loop.
        spec = await trio.to_thread.run_sync(check) if "path" in body else check()
        if spec.id in self.slots:
            raise Conflict(f"agent {spec.id!r} already exists")
        slot = self._add(spec, "api")
        self._table_changed()
        done = Reply()
        assert self._nursery is not None
        self._nursery.start_soon(self._settle_load, slot, body, done)
        return done

    async def _settle_load(self, slot: Slot, table: dict[str, Any], done: Reply) -> None:
        """Wait for a loaded agent's first start, then ask the owner to keep it (and
        write the state file) or to forget it; answer the load's caller."""
        why = await slot.wait_started() if slot.active else None
        try:
            if why is None:
                done.set(await self._call(partial(self._keep_loaded, slot, table)))
                return
            await self._call(partial(self._forget, slot))
        except (StateNotSaved, StartFailed, ShuttingDown) as exc:
            if why is None:
                done.fail(exc)
                return
        done.fail(StartFailed(f"agent {slot.spec.id!r} failed to start: {why}"))

    async def _keep_loaded(self, slot: Slot, table: dict[str, Any]) -> Slot:
        agent_id = slot.spec.id
        if self.slots.get(agent_id) is not slot:
            raise StartFailed(f"agent {agent_id!r} was replaced or removed while it started")
        try:
            self.overlay.add(agent_id, table)
        except StateNotSaved:
            await self._forget(slot)
            raise
        log.info("%s: loaded over the API", agent_id)
        return slot

    async def _forget(self, slot: Slot) -> None:
        if self.slots.get(slot.spec.id) is slot:
            await self._stop_slots([slot.spec.id])
            self._remove(slot.spec.id)
            self._table_changed()

    async def unload(self, agent_id: str) -> None:
        """Stop and remove an agent loaded over the API; return after its cleanup ran.

        Raises StateNotSaved (the agent stays) if the state file cannot be written."""
        await self._call(partial(self._do_unload, agent_id))

    async def _do_unload(self, agent_id: str) -> None:
        slot = self._get(agent_id)
        if slot.source == "manifest":
            raise Conflict(
                f"agent {agent_id!r} is declared in {self.manifest.path}; remove it there and reload"
            )
        self.overlay.remove(agent_id)  # first: if the file cannot be written, it stays
        await self._forget(slot)
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
