"""In-process agents for the in-process runner's tests (``agents.inproc_agents:<name>``).

They report what they do through ``ctx.status(...)``, which the tests' hooks record, so
a test sees the agent's own account (did ``finally`` run? was ``ctx.stopping`` set?)
without sharing state with it.
"""

from __future__ import annotations

import os
import signal

import anyio
import trio

from supervisor import AgentContext


async def returns(ctx: AgentContext) -> None:
    ctx.status("ran")


async def raises(ctx: AgentContext) -> None:
    raise ValueError("boom")


async def raises_in_child(ctx: AgentContext) -> None:
    async def child() -> None:
        raise ValueError("boom")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(child)


async def raises_many(ctx: AgentContext) -> None:
    inner = ExceptionGroup("inner", [KeyError("b"), OSError("c")])
    raise ExceptionGroup("several", [ValueError("a"), inner, RuntimeError()])


async def exits(ctx: AgentContext) -> None:
    raise SystemExit(ctx.params["code"])


async def exits_in_child(ctx: AgentContext) -> None:
    async def child() -> None:
        raise SystemExit(4)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(child)


async def interrupts(ctx: AgentContext) -> None:
    raise KeyboardInterrupt


async def interrupts_in_child(ctx: AgentContext) -> None:
    async def child() -> None:
        raise KeyboardInterrupt

    async with trio.open_nursery() as nursery:
        nursery.start_soon(child)


async def raises_base_exception(ctx: AgentContext) -> None:
    """Raises what `params["raise"]` names: a BaseException or a group of them."""
    raise {
        "GeneratorExit": GeneratorExit("closed"),
        "SystemExit+ValueError": BaseExceptionGroup("g", [SystemExit(3), ValueError("v")]),
        "KeyboardInterrupt+ValueError": BaseExceptionGroup(
            "g", [KeyboardInterrupt(), ValueError("v")]
        ),
        "KeyboardInterrupt+SystemExit": BaseExceptionGroup(
            "g", [KeyboardInterrupt(), SystemExit(1)]
        ),
    }[ctx.params["raise"]]


async def interrupted_by_sigint(ctx: AgentContext) -> None:
    """Sends SIGINT to its own process while running (trio's handler raises it here)."""
    os.kill(os.getpid(), signal.SIGINT)
    for _ in range(10**9):  # the handler runs between bytecodes, long before this ends
        pass


async def interrupts_while_stopping(ctx: AgentContext) -> None:
    try:
        ctx.ready()
        await trio.sleep_forever()
    finally:
        raise KeyboardInterrupt


async def echoes_params(ctx: AgentContext) -> None:
    ctx.status(f"params {ctx.params}")
    # The agent's own copy: the spec must not see it, nested tables or not.
    ctx.params["added"] = True
    if "nested" in ctx.params:
        ctx.params["nested"]["changed"] = True


async def notifies(ctx: AgentContext) -> None:
    await trio.sleep(ctx.params.get("delay", 0))
    ctx.ready()
    ctx.ready()
    ctx.status("ready said")
    await trio.sleep_forever()


async def idles(ctx: AgentContext) -> None:
    try:
        ctx.status("running")
        await trio.sleep_forever()
    finally:
        ctx.status(f"finally, stopping={ctx.stopping.is_set()}")


async def starts_slowly(ctx: AgentContext) -> None:
    try:
        ctx.status("connecting")
        await trio.sleep(3600)
        ctx.ready()
        await trio.sleep_forever()
    finally:
        ctx.status(f"finally, stopping={ctx.stopping.is_set()}")


async def starts_at_once(ctx: AgentContext) -> None:
    """Reaches its first checkpoint only inside ``try``: tests a stop before that."""
    ctx.status("started")
    try:
        await trio.sleep_forever()
    finally:
        ctx.status(f"finally, stopping={ctx.stopping.is_set()}")


async def cleans_up(ctx: AgentContext) -> None:
    try:
        await trio.sleep_forever()
    finally:
        with ctx.cleanup():
            await trio.sleep(ctx.params["cleanup"])
            ctx.status("cleaned up")


async def hangs_in_cleanup(ctx: AgentContext) -> None:
    try:
        await trio.sleep_forever()
    finally:
        with ctx.cleanup() as scope:
            await trio.sleep_forever()
        ctx.status(f"cleanup cut short={scope.cancelled_caught}")


async def drains(ctx: AgentContext) -> None:
    """The drain pattern: notice the stop on ``ctx.stopping``, drain under cleanup()."""

    async def serve() -> None:
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        await ctx.stopping.wait()
        with ctx.cleanup():
            await trio.sleep(1)  # hand over in-flight work
            ctx.status(f"drained at {trio.current_time():g}")


async def raises_while_stopping(ctx: AgentContext) -> None:
    try:
        await trio.sleep_forever()
    finally:
        raise RuntimeError("cleanup failed")


async def swallows_the_stop(ctx: AgentContext) -> None:
    try:
        await trio.sleep_forever()
    except trio.Cancelled:
        ctx.status("swallowed")


async def anyio_workers(ctx: AgentContext) -> None:
    async def worker(n: int) -> None:
        try:
            await anyio.sleep_forever()
        finally:
            ctx.status(f"worker {n} cancelled")

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker, 1)
            tg.start_soon(worker, 2)
            await anyio.sleep(0.5)
            ctx.ready()
            await anyio.sleep_forever()
    finally:
        with ctx.cleanup():
            await anyio.sleep(1)
            ctx.status("anyio cleanup done")


async def anyio_shielded_cleanup(ctx: AgentContext) -> None:
    """anyio's own shielded scope with a deadline works as well as ctx.cleanup()."""
    try:
        await anyio.sleep_forever()
    finally:
        with anyio.CancelScope(shield=True) as scope:
            scope.deadline = anyio.current_time() + 2
            await anyio.sleep(1)
            ctx.status("anyio shielded cleanup done")


class Service:
    """An object with ``async def __call__`` is an entry too; so is a method of one."""

    async def __call__(self, ctx: AgentContext) -> None:
        ctx.status("service called")

    async def run(self, ctx: AgentContext) -> None:
        ctx.status("service.run called")


service = Service()


def not_async(ctx: AgentContext) -> None:
    pass


NOT_CALLABLE = 3
