"""An in-process agent that heartbeats once a second (the watchdog benchmark)."""

import random

import trio


async def main(ctx: object) -> None:
    beat = getattr(ctx, "heartbeat", None)  # a supervisor from before ctx.heartbeat()
    await trio.sleep(random.random())  # spread the fleet's beats over the second
    while True:
        if beat is not None:
            beat()
        await trio.sleep(1)
