"""In-process agents for the HTTP API tests (entries ``tests.agents.api_agents:NAME``)."""

from __future__ import annotations

import trio

from supervisor import AgentContext


async def idle(ctx: AgentContext) -> None:
    """Run until stopped."""
    await trio.sleep_forever()


async def cleanup(ctx: AgentContext) -> None:
    """Run until stopped; on the way out, take a moment, then write ``params.file``."""
    try:
        await trio.sleep_forever()
    finally:
        with ctx.cleanup():
            await trio.sleep(0.05)
            await trio.Path(ctx.params["file"]).write_text("cleaned up\n")


# Events a test creates (in its own trio run) to hold `held` agents in their cleanup.
RELEASE: dict[str, trio.Event] = {}


async def held(ctx: AgentContext) -> None:
    """Run until stopped; on the way out, wait for ``RELEASE[id]`` to be set."""
    try:
        await trio.sleep_forever()
    finally:
        with ctx.cleanup():
            await RELEASE[ctx.id].wait()


async def slow(ctx: AgentContext) -> None:
    """Become ready (``ready = "notify"``) after ``params.delay`` seconds."""
    await trio.sleep(ctx.params.get("delay", 0.2))
    ctx.ready()
    await trio.sleep_forever()


async def boom(ctx: AgentContext) -> None:
    """Fail at once."""
    raise RuntimeError("boom")
