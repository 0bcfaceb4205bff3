"""Server-Sent Events over Starlette's `StreamingResponse` (docs/api.md, "Why no library").

The framing is a few lines (``id:``, ``event:``, ``data:``, a blank line); what matters
is around it and is ours either way: where events come from, how far a reader may fall
behind, when a stream ends. `StreamingResponse` already ends the body when the client
leaves (it listens for ``http.disconnect`` beside the body), which cancels the generator.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import trio
from starlette.responses import StreamingResponse

# A comment line this often while nothing happens, so proxies and browsers keep the
# connection (only while a client is connected: an idle supervisor with no reader sleeps).
KEEPALIVE = 15.0


def frame(event: str, data: Any, event_id: str | None = None) -> str:
    """One event in SSE syntax. `data` is sent as one line of JSON."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def event_stream(body: AsyncIterator[str]) -> StreamingResponse:
    """A ``text/event-stream`` response sending what `body` yields."""
    return StreamingResponse(
        body,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


async def wait_or_keepalive(wait: Callable[[], Awaitable[None]]) -> bool:
    """Await `wait()`; False if KEEPALIVE seconds passed first (send a keepalive)."""
    with trio.move_on_after(KEEPALIVE):
        await wait()
        return True
    return False


KEEPALIVE_FRAME = ": keepalive\n\n"
