"""`AgentContext`: what an in-process agent is handed (SPEC §2)."""

from __future__ import annotations

from typing import Any

import trio

from supervisor.logs import AgentLog, agent_log
from supervisor.runners import Hooks


class AgentContext:
    """The handle an in-process agent's ``async def main(ctx)`` receives.

    Attributes:
      id: the agent's id.
      params: the agent's ``params`` table.
      log: a logger whose records are tagged with the agent's id.
      stopping: set when a stop is requested, just before the agent is cancelled;
        code in ``finally`` can tell a requested stop from other cancellations.
    """

    def __init__(
        self, agent_id: str, params: dict[str, Any], stop_timeout: float, hooks: Hooks
    ) -> None:
        self.id = agent_id
        self.params = params
        self.log: AgentLog = agent_log(agent_id)
        self.stopping = trio.Event()
        self._stop_timeout = stop_timeout
        self._hooks = hooks

    def ready(self) -> None:
        """Say the agent is ready (only needed with ``ready = "notify"``). Idempotent."""
        self._hooks.ready()

    def status(self, text: str) -> None:
        """Publish a one-line status, shown by ``supervisor status`` and the API."""
        self._hooks.status(text)

    def cleanup(self) -> trio.CancelScope:
        """A shielded cancel scope for cleanup that must await, bounded by `stop_timeout`.

        Use it in ``finally`` or ``except trio.Cancelled``::

            finally:
                with ctx.cleanup():
                    await conn.aclose()

        Inside, awaits are not cancelled by the stop; once `stop_timeout` seconds have
        passed since the scope was entered, they are (the hard cancel).
        """
        return trio.CancelScope(shield=True, deadline=trio.current_time() + self._stop_timeout)
