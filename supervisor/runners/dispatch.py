"""The runner for every kind: dispatch on an agent's kind to the runner that starts it.

To add a kind: a runner module beside this one keeping the contract in
`supervisor.runners`, a branch here, and the kind's key in `supervisor.manifest.model`.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from supervisor.core.outcome import Outcome
from supervisor.keeper import Keeper
from supervisor.manifest import AgentSpec
from supervisor.runners import Hooks, Runner
from supervisor.runners.containment import Containment
from supervisor.runners.process import run_process


def make_runner(keeper: Keeper | None = None, containment: Containment | None = None) -> Runner:
    """The runner that dispatches on an agent's kind; process groups go to `keeper`,
    and processes are contained as `containment` says (by ancestry if None)."""

    inprocess: Runner | None = None

    def run_agent(spec: AgentSpec, hooks: Hooks) -> Coroutine[Any, Any, Outcome]:
        # Not an ``async def``: it returns the kind's coroutine, so that a running
        # agent's stack holds no frame of its own (~260 B per agent).
        nonlocal inprocess
        if spec.kind == "process":
            return run_process(spec, hooks, keeper=keeper, containment=containment)
        if inprocess is None:  # at the first in-process agent: processes start without it
            from supervisor.runners.inprocess import run_inprocess

            inprocess = run_inprocess
        return inprocess(spec, hooks)

    return run_agent
