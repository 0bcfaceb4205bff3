"""A child's output pipe, relayed line by line (see `supervisor.runners.process`)."""

from __future__ import annotations

import codecs

import trio

from supervisor.logs import LineSink, relay_lines
from supervisor.output import LINE_LIMIT, cut

# Output is read in chunks this large; a line longer than LINE_LIMIT characters is
# relayed in pieces of LINE_LIMIT, so a child that never writes a newline costs bounded
# memory (docs/operations.md, "A flood of output").
READ_SIZE = 65536


class LineRelay:
    """Relays one output pipe, line by line, to the agent's recent output and stdout.

    `run` returns at EOF (setting `eof`) or when cancelled; either way it relays every
    line already read, then a partial last line, and closes the pipe. It reads the next
    chunk only once the last one is relayed, so a child that outpaces us blocks on its
    full pipe (as on a slow terminal), and what we hold per pipe is bounded: one chunk
    of READ_SIZE bytes and a partial line under LINE_LIMIT characters. Writing to our
    stdout never waits: lines that do not fit its bounded queue are dropped and counted
    (`supervisor.logs`). Checkpoints between reads and every LINES_PER_STEP lines
    written through `logging`, so a chatty child cannot hog the loop.
    """

    def __init__(self, agent_id: str, stream: str, fd: int, sink: LineSink) -> None:
        self._agent_id = agent_id
        self._stream_name = stream
        self._stream = trio.lowlevel.FdStream(fd)
        self._sink = sink
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._partial = ""
        self.eof = trio.Event()
        self.chunks = 0  # read so far: whether a drain is still making progress
        self._reading = False  # waiting for the pipe (not busy relaying what it read)

    async def run(self) -> None:
        try:
            while True:
                self._reading = True
                chunk = await self._stream.receive_some(READ_SIZE)
                self._reading = False
                if not chunk:
                    break
                self.chunks += 1
                await self._deliver(self._split(self._decoder.decode(chunk)))
            self.eof.set()
        finally:
            last = self._partial + self._decoder.decode(b"", final=True)
            if last:
                self._partial = ""
                with trio.CancelScope(shield=True):
                    await self._deliver(cut(last))
            self._stream.close()

    def _split(self, text: str) -> list[str]:
        lines = (self._partial + text).split("\n")
        partial = lines.pop()
        if lines and max(map(len, lines)) > LINE_LIMIT:
            lines = [piece for line in lines for piece in cut(line)]
        while len(partial) >= LINE_LIMIT:
            lines.append(partial[:LINE_LIMIT])
            partial = partial[LINE_LIMIT:]
        self._partial = partial
        return lines

    async def _deliver(self, lines: list[str]) -> None:
        if lines:
            self._sink(self._stream_name, lines)
            await relay_lines(self._agent_id, self._stream_name, lines)

    async def drain(self, stalled: float, limit: float) -> None:
        """Wait for end of file while output still flows: give up once `stalled`
        seconds pass with nothing read (a process we could not find holds the pipe),
        or after `limit` seconds in all. A slow relay (a loaded machine, a slow log)
        is no reason to drop what the agent wrote before it ended."""
        give_up = trio.current_time() + limit
        while not self.eof.is_set() and trio.current_time() < give_up:
            seen = self.chunks
            with trio.move_on_after(stalled):
                await self.eof.wait()
            if self.chunks == seen and self._reading:
                return
