"""An in-process agent: logs a heartbeat every `interval` seconds (ctx.params)."""

import trio


async def main(ctx):
    interval = float(ctx.params.get("interval", 5.0))
    greeting = ctx.params.get("greeting", "hello")
    beats = 0
    ctx.log.info("%s from %s, beating every %.1fs", greeting, ctx.id, interval)
    ctx.ready()  # the manifest says ready = "notify"
    try:
        while True:
            await trio.sleep(interval)
            beats += 1
            ctx.status(f"{beats} beats")
            ctx.log.info("beat %d", beats)
    finally:
        ctx.log.info("stopping after %d beats", beats)
