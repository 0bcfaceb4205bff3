"""Routes that watch: an agent's recent output, the event stream, the status page.

``GET /agents/{id}/logs`` reads the slot's `RecentOutput`; with ``follow=true`` it is a
cursor into it, streamed as Server-Sent Events. ``GET /events`` is a cursor into the
owner's `EventBus`. Neither keeps a queue per client: how far a client may fall behind
is the ring's or the history's size, and one that falls further is told so (docs/api.md).
``GET /`` is the status page, a static file of the package that holds no data.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from functools import partial
from typing import Any

import attrs
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute

from supervisor.api.access import Guard
from supervisor.api.agent import agents_json, wall_offset
from supervisor.api.errors import ApiError
from supervisor.api.routing import route
from supervisor.api.sse import KEEPALIVE_FRAME, event_stream, frame, wait_or_keepalive
from supervisor.events import Event, EventBus
from supervisor.output import OutputLine, RecentOutput
from supervisor.owner import Supervisor
from supervisor.slot import Slot

DEFAULT_LINES = 100
PAGE = "page/index.html"


class Observe:
    """The handlers, bound to one supervisor."""

    def __init__(self, sup: Supervisor, guard: Guard) -> None:
        self.sup = sup
        self.guard = guard
        self._page: bytes | None = None  # read at the first request (importlib.resources)

    def routes(self) -> list[BaseRoute]:
        return [
            route("/", GET=self.status_page),
            route("/agents/{id}/logs", GET=self.logs),
            route("/events", GET=self.events),
        ]

    @property
    def page(self) -> bytes:
        if self._page is None:
            from importlib import resources  # (it loads zipfile: not for a supervisor unasked)

            self._page = resources.files("supervisor.api").joinpath(PAGE).read_bytes()
        return self._page

    async def status_page(self, request: Request) -> Response:
        return HTMLResponse(
            self.page,
            headers={
                "Cache-Control": "no-cache",
                "Content-Security-Policy": "default-src 'self'; script-src 'unsafe-inline'; "
                "style-src 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'",
                "X-Frame-Options": "DENY",
            },
        )

    # -- logs ---------------------------------------------------------------------------

    async def logs(self, request: Request) -> Response:
        self._check_read(request)
        slot = self._slot(request.path_params["id"])
        count = _int_param(request, "lines", DEFAULT_LINES)
        follow = _bool_param(request, "follow")
        recent = slot.recent_output
        if not follow:
            lines = [] if recent is None else recent.tail(count)
            return JSONResponse({"lines": [_line_json(line) for line in lines]})
        recent = slot.output_buffer()
        cursor = _resume_line(request, recent)
        if cursor is None:
            tail = recent.tail(count)
            cursor = tail[0].seq if tail else recent.next_seq
        return event_stream(self._follow(recent, cursor))

    async def _follow(self, recent: RecentOutput, cursor: int) -> AsyncGenerator[str, None]:
        while True:
            lines, skipped = recent.since(cursor)
            parts = []
            if skipped:
                parts.append(frame("skipped", {"lines": skipped}))
            parts.extend(frame("line", _line_json(line), str(line.seq)) for line in lines)
            cursor = recent.next_seq
            if parts:
                yield "".join(parts)
            if recent.closed:
                yield frame("end", {"reason": "the agent was removed"})
                return
            if not await wait_or_keepalive(partial(recent.wait_after, cursor)):
                yield KEEPALIVE_FRAME

    # -- events -------------------------------------------------------------------------

    async def events(self, request: Request) -> Response:
        self._check_read(request)
        bus = self.sup.events
        last = request.headers.get("last-event-id", "")
        cursor = bus.resume(last) if last else None
        snapshot = cursor is None
        if cursor is None:
            cursor = bus.subscribe()
        return event_stream(self._stream(bus, cursor, snapshot))

    async def _stream(
        self, bus: EventBus, cursor: int, snapshot: bool
    ) -> AsyncGenerator[str, None]:
        offset = wall_offset()
        if snapshot:
            # No local keeps the agents' objects: while the client reads (or does not),
            # the stream holds only the frame's text (10,000 agents: 2 MB, not 10 MB).
            yield frame(
                "snapshot",
                {"agents": agents_json(self.sup.slots.values(), offset, every=True)},
                bus.event_id(cursor - 1),
            )
        while True:
            lost = bus.lost(cursor)
            if lost:
                reason = f"this client fell {lost} events behind; reconnect for a new snapshot"
                yield frame("cutoff", {"reason": reason})
                return
            events = bus.since(cursor)
            if events:
                cursor = events[-1].n + 1
                yield "".join(
                    frame(e.kind, _event_json(e, offset), bus.event_id(e.n)) for e in events
                )
            if bus.closed:
                return
            if not await wait_or_keepalive(partial(bus.wait_after, cursor)):
                yield KEEPALIVE_FRAME

    # -- helpers ------------------------------------------------------------------------

    def _check_read(self, request: Request) -> None:
        """With a token set, reading output and events needs it as much as changes do."""
        if self.guard.token is not None:
            self.guard.check(request)

    def _slot(self, agent_id: str) -> Slot:
        slot = self.sup.slots.get(agent_id)
        if slot is None:
            raise ApiError(404, f"no agent {agent_id!r}")
        return slot


def _line_json(line: OutputLine) -> dict[str, Any]:
    return {"ts": round(line.ts, 3), "stream": line.stream, "msg": line.msg}


def _event_json(event: Event, offset: float) -> Any:
    if event.kind != "agent":
        if event.kind == "reload" and "result" in event.data:
            return {"ok": True, **attrs.asdict(event.data["result"])}
        return event.data
    agent_id, state, reason, pid, restarts, since = event.data
    return {
        "id": agent_id,
        "state": state,
        "reason": reason,
        "pid": pid,
        "restarts": restarts,
        "since": round(offset + since, 3),
    }


def _resume_line(request: Request, recent: RecentOutput) -> int | None:
    last = request.headers.get("last-event-id", "").strip()
    if not last.isdigit() or int(last) >= recent.next_seq:
        return None
    return int(last) + 1


def _int_param(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or len(raw) > 9:
        raise ApiError(400, f"{name}: must be a whole number from 0 up, not {raw[:40]!r}")
    return int(raw)


def _bool_param(request: Request, name: str) -> bool:
    raw = request.query_params.get(name, "false").lower()
    if raw not in ("true", "false", "1", "0"):
        raise ApiError(400, f"{name}: must be true or false, not {raw[:40]!r}")
    return raw in ("true", "1")
