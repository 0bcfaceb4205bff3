"""In-process agents for the observing tests (entries ``tests.agents.observe_agents:NAME``)."""

from __future__ import annotations

import trio
import trio.lowlevel

from supervisor import AgentContext

# How many times each agent id has started, in this process.
STARTS: dict[str, int] = {}


async def talker(ctx: AgentContext) -> None:
    """Log ``params.lines`` numbered lines, then run until stopped."""
    for i in range(ctx.params.get("lines", 3)):
        ctx.log.info("line %d", i)
    await trio.sleep_forever()


async def crash_once(ctx: AgentContext) -> None:
    """Log a line saying which start this is; fail the first start, then stay up."""
    STARTS[ctx.id] = STARTS.get(ctx.id, 0) + 1
    ctx.log.warning("start %d", STARTS[ctx.id])
    if STARTS[ctx.id] == 1:
        raise RuntimeError("first start fails")
    await trio.sleep_forever()


async def spinner(ctx: AgentContext) -> None:
    """Burn CPU in short steps (each well under loop_lag_warning), until stopped."""
    while True:
        sum(range(20_000))
        await trio.lowlevel.checkpoint()
