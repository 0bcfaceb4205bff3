"""The event bus: every change of an agent, every reload and the shutdown, published once.

Slots publish their changes of state and pid, the owner its reloads, removals and the
shutdown (docs/api.md, "GET /events"). Readers are cursors into one bounded history:

- Nobody listening costs nothing: until the first subscriber arrives the bus keeps no
  history, and a publish is one counter increment (`Last-Event-ID` can only name an
  event some subscriber saw, so there is nothing to resume before that).
- A subscriber has no queue of its own. It reads `since(cursor)` and waits with
  `wait_after(cursor)`; the history (`HISTORY` events) is the bound on how far it may
  fall behind. Past that, `since` says how much it lost and the subscriber is cut off.
  So a slow or stuck client never slows the publisher, and costs no memory per event.

Event ids are ``EPOCH-N``: `N` counts events of this run, `EPOCH` tells this run from an
earlier one, so a client resuming with an id from before a restart gets a fresh snapshot
instead of a wrong resume.
"""

from __future__ import annotations

import itertools
import secrets
from collections import deque
from typing import Any, NamedTuple

import trio

HISTORY = 10_000  # events kept for Last-Event-ID and slow subscribers, once any subscribed


class Event(NamedTuple):
    n: int
    kind: str  # "agent", "removed", "reload", "shutdown"
    data: Any  # agent: (id, state, reason, pid, restarts, since in trio time); else a dict


class EventBus:
    """Published to synchronously; read by subscribers (see the module docstring)."""

    def __init__(self) -> None:
        self.epoch = secrets.token_hex(4)
        self.next = 1  # the number of the next event
        self.history: deque[Event] | None = None
        self.shut_down = False
        self.closed = False  # the owner has ended: streams end after the last event
        self._wake: trio.Event | None = None

    def publish(self, kind: str, data: Any) -> None:
        """Record one event (sync, never blocks)."""
        n = self.next
        self.next = n + 1
        if kind == "shutdown":
            self.shut_down = True
        if self.history is not None:
            self.history.append(Event(n, kind, data))
            if self._wake is not None:
                self._wake.set()
                self._wake = None

    def agent(
        self, agent_id: str, state: str, reason: str, pid: int | None, restarts: int, since: float
    ) -> None:
        """An agent's change (its state, reason, pid or restarts)."""
        n = self.next
        self.next = n + 1
        if self.history is not None:
            self.history.append(Event(n, "agent", (agent_id, state, reason, pid, restarts, since)))
            if self._wake is not None:
                self._wake.set()
                self._wake = None

    # -- subscribers ------------------------------------------------------------------

    def subscribe(self) -> int:
        """Start keeping history; return the cursor of a new subscriber (the next event)."""
        if self.history is None:
            self.history = deque(maxlen=HISTORY)
        return self.next

    def resume(self, last_event_id: str) -> int | None:
        """The cursor after `last_event_id`, or None if it cannot be resumed from here
        (another run's id, garbage, or older than the history): then send a snapshot."""
        epoch, _, number = last_event_id.strip().partition("-")
        if epoch != self.epoch or not number.isdigit() or self.history is None:
            return None
        cursor = int(number) + 1
        if cursor > self.next or self.lost(cursor):
            return None
        return cursor

    def lost(self, cursor: int) -> int:
        """How many events numbered `cursor` or more the history no longer holds."""
        first = self.history[0].n if self.history else self.next
        return max(0, first - cursor)

    def since(self, cursor: int) -> list[Event]:
        """The events numbered `cursor` or more still in the history, oldest first."""
        if self.history is None or cursor >= self.next:
            return []
        first = self.history[0].n if self.history else self.next
        return list(itertools.islice(self.history, max(0, cursor - first), None))

    def event_id(self, n: int) -> str:
        return f"{self.epoch}-{n}"

    def close(self) -> None:
        """The owner has ended: wake the subscribers so that they finish."""
        self.closed = True
        if self._wake is not None:
            self._wake.set()
            self._wake = None

    async def wait_after(self, cursor: int) -> None:
        """Return once an event numbered `cursor` or more exists, or the bus is closed."""
        while self.next <= cursor and not self.closed:
            if self._wake is None:
                self._wake = trio.Event()
            await self._wake.wait()
        await trio.lowlevel.checkpoint()
