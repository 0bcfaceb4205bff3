"""Server-Sent Events over Starlette's `StreamingResponse` (docs/api.md, "Why no library").

The framing is a few lines (``id:``, ``event:``, ``data:``, a blank line); what matters
is around it and is ours either way: where events come from, how far a reader may fall
behind, when a stream ends. `StreamingResponse` already ends the body when the client
leaves (it listens for ``http.disconnect`` beside the body), which cancels the task
iterating the generator; `_EventStream` then closes the generator itself, at once (its
``finally`` blocks run, nothing waits for the garbage collector).

A client that stops reading is not waited on forever: each send to it is bounded by the
server's send timeout (`supervisor.api.server.WRITE_TIMEOUT`), after which its connection
is dropped and the stream ends as above (docs/api.md, "A slow or stuck client").
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import trio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

# A comment line this often while nothing happens, so proxies and browsers keep the
# connection (only while a client is connected: an idle supervisor with no reader sleeps).
KEEPALIVE = 15.0


def frame(event: str, data: Any, event_id: str | None = None) -> str:
    """One event in SSE syntax. `data` is sent as one line of JSON."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def event_stream(body: AsyncGenerator[str, None]) -> StreamingResponse:
    """A ``text/event-stream`` response sending what `body` yields."""
    return _EventStream(body)


class _EventStream(StreamingResponse):
    """A stream whose generator is closed when the response ends, however it ends."""

    def __init__(self, body: AsyncGenerator[str, None]) -> None:
        super().__init__(
            body,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )
        self.events = body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.events.aclose()  # no await inside our generators' finally: no checkpoint


async def wait_or_keepalive(wait: Callable[[], Awaitable[None]]) -> bool:
    """Await `wait()`; False if KEEPALIVE seconds passed first (send a keepalive)."""
    with trio.move_on_after(KEEPALIVE):
        await wait()
        return True
    return False


KEEPALIVE_FRAME = ": keepalive\n\n"
