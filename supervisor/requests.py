"""What callers and the owner say to each other: the refusals, the one-shot reply, and a
reload's result. `supervisor.owner` re-exports the names callers use.

May import: trio, `attrs`; nothing of the supervisor.
"""

from __future__ import annotations

from typing import Any

import attrs
import trio


class NotFound(LookupError):
    """No agent has that id."""


class Conflict(Exception):
    """The request clashes with the agent's current state or origin."""


class StartFailed(Exception):
    """An agent loaded over the API failed its first start; nothing was kept."""


class ShuttingDown(Exception):
    """The supervisor is stopping and takes no more requests."""


@attrs.frozen
class ReloadResult:
    started: tuple[str, ...]
    stopped: tuple[str, ...]
    restarted: tuple[str, ...]
    unchanged: tuple[str, ...]


class Reply:
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
