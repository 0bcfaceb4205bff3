"""A folder agent: greets `name` every `every` seconds, with the default greeting."""

import trio


async def main(ctx):
    name = ctx.params["name"]
    greeting = ctx.params.get("greeting", "hello")
    every = float(ctx.params.get("every", 10.0))
    while True:
        ctx.log.info("%s, %s!", greeting, name)
        await trio.sleep(every)
