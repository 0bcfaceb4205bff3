"""An in-process agent for the owner's stateful test: it runs until told to crash.

`RUNNING` counts live runs per id: an id above 1 means two runs of one agent overlapped,
which `OVERLAPS` records (the test asserts it stays empty).
"""

from __future__ import annotations

import collections

import trio

from supervisor import AgentContext

RUNNING: collections.Counter[str] = collections.Counter()
OVERLAPS: list[str] = []
CRASH: dict[str, trio.Event] = {}


async def main(ctx: AgentContext) -> None:
    RUNNING[ctx.id] += 1
    if RUNNING[ctx.id] > 1:
        OVERLAPS.append(ctx.id)
    try:
        crash = CRASH[ctx.id] = trio.Event()
        await crash.wait()
        raise RuntimeError("told to crash")
    finally:
        RUNNING[ctx.id] -= 1
        if CRASH.get(ctx.id) is crash:
            del CRASH[ctx.id]
