"""An in-process agent that does nothing, for the 10,000-agent scale benchmark."""

import trio


async def main(ctx: object) -> None:
    await trio.sleep_forever()
