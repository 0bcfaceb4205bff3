"""`AgentContext`: what an in-process agent is handed (docs/agents.md, "The context").

One context is made per start of an agent, by the in-process runner
(`supervisor.runners.inprocess`), and lives exactly as long as that start. The agent
reads from it (`id`, `params`, `log`, `stopping`) and reports through it (`ready()`,
`status()`, `heartbeat()`); `cleanup()` bounds the awaits it makes while it is being stopped.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
from collections.abc import Iterator
from typing import Any

import trio

from supervisor.logs import AgentLog, agent_log
from supervisor.runners import Hooks


class AgentContext:
    """The handle an in-process agent's ``async def main(ctx)`` receives.

    Attributes:
      id: the agent's id.
      params: the agent's ``params`` table: the agent's own copy, free to change.
      log: a logger whose records are tagged with the agent's id.
      stopping: a `trio.Event`, set when a stop is requested, just *before* the agent
        is cancelled: code in ``finally`` can tell a requested stop from other
        cancellations, and a task waiting on it can start draining (under `cleanup()`,
        since the cancellation follows at once).
      stop_timeout: the seconds of grace `cleanup()` gives after a stop.

    The runner, not the agent, calls the underscored methods: `_request_stop()` on a
    stop, before it cancels the agent.
    """

    def __init__(
        self, agent_id: str, params: dict[str, Any], stop_timeout: float, hooks: Hooks
    ) -> None:
        """`params` is the manifest's table, left as it is: `params` is a copy of it."""
        self.id = agent_id
        self._given = params
        self._params: dict[str, Any] | None = None
        self.stop_timeout = stop_timeout
        # `params`, `log` and `stopping` are made on first use: most agents of a large
        # fleet never touch one or the other, and each costs a few hundred bytes.
        self._log: AgentLog | None = None
        self._stopping: trio.Event | None = None
        self._hooks = hooks
        self._ready_reported = False
        self._stop_requested_at: float | None = None

    @property
    def params(self) -> dict[str, Any]:
        if self._params is None:
            self._params = _own_copy(self._given)
        return self._params

    @params.setter
    def params(self, value: dict[str, Any]) -> None:
        self._params = value

    @property
    def log(self) -> AgentLog:
        if self._log is None:
            self._log = agent_log(self.id, self._hooks.output)
        return self._log

    @property
    def stopping(self) -> trio.Event:
        if self._stopping is None:
            self._stopping = trio.Event()
            if self._stop_requested_at is not None:
                self._stopping.set()
        return self._stopping

    def ready(self) -> None:
        """Say the agent is ready (only needed with ``ready = "notify"``).

        Idempotent: only the first call is reported. With ``ready = "immediate"`` the
        runner has already reported readiness at launch, so calling it is harmless.
        """
        if not self._ready_reported:
            self._ready_reported = True
            self._hooks.ready()

    def status(self, text: str) -> None:
        """Publish a one-line status, shown by ``supervisor status`` and the API."""
        self._hooks.status(text)

    def heartbeat(self) -> None:
        """Say the agent is alive: feeds its ``watchdog`` (a no-op without one).

        Cheap enough to call in every loop iteration: it stores the time, nothing more.
        With ``watchdog = N``, a running agent that goes N seconds without calling it is
        stopped and its run counts as failed (``watchdog: no heartbeat within Ns``).
        """
        self._hooks.heartbeat()

    @contextlib.contextmanager
    def cleanup(self) -> Iterator[trio.CancelScope]:
        """A shielded cancel scope for cleanup that must await, bounded by `stop_timeout`.

        Use it in ``finally`` (or ``except trio.Cancelled``, or after
        ``await ctx.stopping.wait()``)::

            finally:
                with ctx.cleanup():
                    await conn.aclose()

        Inside, awaits are not cancelled by the stop. They are cancelled (the hard
        cancel) once `stop_timeout` seconds have passed since the stop was requested, or,
        with no stop requested (the agent is cleaning up after its own error), since the
        scope was entered. Every ``with ctx.cleanup()`` of one stop shares that one
        deadline, so all of an agent's cleanup together gets `stop_timeout`, not each
        block. The hard cancel ends the ``with`` block (the scope catches its own
        cancellation) and is logged as a warning; code after the block runs, and any
        unshielded await there is cancelled at once by the stop.

        Works in anyio agents too: on the trio backend a trio cancel scope is what anyio's
        own scopes are made of.
        """
        start = self._stop_requested_at
        if start is None:
            start = trio.current_time()
        with trio.CancelScope(shield=True, deadline=start + self.stop_timeout) as scope:
            yield scope
        if scope.cancelled_caught:
            self.log.warning(
                "cleanup cut short: not done %gs after the stop (stop_timeout)", self.stop_timeout
            )

    def _request_stop(self) -> None:
        """Note the stop's time (the start of `cleanup()`'s grace) and set `stopping`."""
        if self._stop_requested_at is None:
            self._stop_requested_at = trio.current_time()
            if self._stopping is not None:
                self._stopping.set()


# Values a shallow copy may share: nothing the agent does to them shows in the manifest.
_IMMUTABLE = (str, int, float, bool, datetime.date, datetime.time)


def _own_copy(params: dict[str, Any]) -> dict[str, Any]:
    """A copy of `params` for the agent: a dict copy when every value is immutable (the
    common flat table: ~1/4 of the time of a deep copy), else a deep copy."""
    for value in params.values():
        if not isinstance(value, _IMMUTABLE):
            return copy.deepcopy(params)
    return dict(params)
