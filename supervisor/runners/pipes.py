"""Children's output pipes, relayed line by line (see `supervisor.runners.process`).

One task, the `OutputPump`, reads every process agent's stdout and stderr: it waits on
one epoll descriptor that watches every pipe, reads what is ready without blocking and
hands it to the pipe's `LineRelay`. An idle pipe costs its relay object and an epoll
entry, not a task, a stream and a suspended read each (docs/operations.md, "A flood of
output"). A leader's exit is awaited on trio's own epoll (`launch.Child.wait_exited`):
the pump and the exited run then wake in the same pass of the loop, and the run ends
its pipes itself if the pump has not got to them (`LineRelay.ended`).
"""

from __future__ import annotations

import codecs
import contextlib
import os
import select
from collections.abc import Sequence

import trio

from supervisor.logs import LineSink, log, relay_lines, write_lines
from supervisor.output import LINE_LIMIT, cut

# Output is read in chunks this large; a line longer than LINE_LIMIT characters is
# relayed in pieces of LINE_LIMIT, so a child that never writes a newline costs bounded
# memory (docs/operations.md, "A flood of output").
READ_SIZE = 65536
# Level-triggered, and a hang-up (the writer closed) is seen as readable: EOF.
_EVENTS = select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR


class LineRelay:
    """Relays one output pipe, line by line, to the agent's recent output and stdout.

    The pump reads it: at EOF the relay sets `eof`, delivers a partial last line and
    closes the pipe; `close()` delivers and closes when the run ends before EOF (a
    process we could not find still holds the pipe). The pump reads the next chunk of a pipe only once the
    last one is relayed, so a child that outpaces us blocks on its full pipe (as on a slow
    terminal), and what we hold per pipe is bounded: one chunk of READ_SIZE bytes and a
    partial line under LINE_LIMIT characters. Writing to our stdout never waits: lines
    that do not fit its bounded queue are dropped and counted (`supervisor.logs`). The
    pump checkpoints after every chunk and every LINES_PER_STEP lines written through
    `logging`, so chatty children cannot hog the loop.
    """

    __slots__ = (
        "_agent_id",
        "_busy",
        "_decoder",
        "_ended",
        "_fd",
        "_partial",
        "_sink",
        "_stream_name",
        "chunks",
        "eof",
    )

    def __init__(self, agent_id: str, stream: str, fd: int, sink: LineSink) -> None:
        self._agent_id = agent_id
        self._stream_name = stream
        self._fd = fd  # -1 once closed
        self._sink = sink
        self._decoder: codecs.IncrementalDecoder | None = None  # made by the first chunk
        self._partial = ""
        self.eof = False  # end of file was read
        self._ended: trio.Event | None = None  # made by the first `wait_eof`
        self.chunks = 0  # read so far: whether a drain is still making progress
        self._busy = False  # relaying what it read (not waiting for the pipe)

    def start(self) -> None:
        """Have the pump read the pipe (OSError if epoll cannot watch one more)."""
        _pump().add(self)

    async def _read(self) -> None:
        """The pipe is readable (or hung up): relay one chunk, or end at EOF."""
        try:
            chunk = os.read(self._fd, READ_SIZE)
        except BlockingIOError:
            return  # someone else's readiness (a reused descriptor number)
        except OSError:
            chunk = b""
        if not chunk:
            self._set_eof()
            self.close()
            return
        self.chunks += 1
        if self._decoder is None:
            self._decoder = _utf8("replace")
        lines = self._split(self._decoder.decode(chunk))
        if lines:
            self._busy = True
            try:
                self._sink(self._stream_name, lines)
                await relay_lines(self._agent_id, self._stream_name, lines)
            finally:
                self._busy = False
        else:
            await trio.lowlevel.checkpoint()

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

    def close(self) -> None:
        """Stop reading: relay the partial last line, close the pipe. Idempotent."""
        if self._fd < 0:
            return
        self._abandon()
        last = self._partial
        if self._decoder is not None:
            last += self._decoder.decode(b"", final=True)
        self._partial = ""
        if last:
            lines = cut(last)
            self._sink(self._stream_name, lines)
            write_lines(self._agent_id, self._stream_name, lines)

    def _abandon(self) -> None:
        """Close the pipe without relaying anything more."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            if (pump := _current.get(None)) is not None:
                pump.remove(fd)
            os.close(fd)

    def ended(self) -> bool:
        """Whether it reached end of file: if it has not yet, whether its pipe is at end
        of file with nothing left in it now, and then it ends, as the pump would (the
        pipes of a leader that just exited, before the pump got to them; not while the
        pump relays what it read). One poll."""
        if not self.eof and self._fd >= 0 and not self._busy and _hung_up(self._fd):
            self._set_eof()
            self.close()
        return self.eof

    def _set_eof(self) -> None:
        self.eof = True
        if self._ended is not None:
            self._ended.set()

    async def wait_eof(self) -> None:
        """Return once end of file was read (at once if it was)."""
        if self.eof:
            await trio.lowlevel.checkpoint()
            return
        if self._ended is None:
            self._ended = trio.Event()
        await self._ended.wait()

    async def drain(self, stalled: float, limit: float) -> None:
        """Wait for end of file while output still flows: give up once `stalled`
        seconds pass with nothing read and nothing to read (a process we could not find
        holds the pipe), or after `limit` seconds in all. A slow relay (a loaded
        machine, a slow log), or a pump busy with another pipe, is no reason to drop
        what the agent wrote before it ended."""
        give_up = trio.current_time() + limit
        while not self.eof and self._fd >= 0 and trio.current_time() < give_up:
            seen = self.chunks
            with trio.move_on_after(stalled):
                await self.wait_eof()
            if self.chunks == seen and not self._busy and not _readable(self._fd):
                return


class OutputPump:
    """The one task that reads every output pipe of this trio run. It starts with the
    first pipe and ends with the last, so a supervisor without process agents has none."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._relays: dict[int, LineRelay] = {}
        self._closed = False

    def add(self, relay: LineRelay) -> None:
        try:
            os.set_blocking(relay._fd, False)
            self._epoll.register(relay._fd, _EVENTS)
        except OSError:
            self._close_if_idle()
            raise
        self._relays[relay._fd] = relay

    def remove(self, fd: int) -> None:
        if self._relays.pop(fd, None) is not None and not self._closed:
            self._unregister(fd)
            self._close_if_idle()

    def _unregister(self, fd: int) -> None:
        with contextlib.suppress(OSError):  # already gone if its descriptor was closed
            self._epoll.unregister(fd)

    def _close_if_idle(self) -> None:
        if not self._relays:
            self._close()

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            if _current.get(None) is self:
                _current.set(None)
            trio.lowlevel.notify_closing(self._epoll)
            self._epoll.close()

    async def run(self) -> None:
        try:
            while not self._closed:
                try:
                    await trio.lowlevel.wait_readable(self._epoll)
                except trio.ClosedResourceError:
                    return  # the last pipe closed while we waited
                if self._closed:
                    return
                for fd, _ in self._epoll.poll(0):
                    # The relay may have closed since (then the dict no longer has it).
                    if (relay := self._relays.get(fd)) is not None:
                        await self._read(relay)
        finally:
            self._close()

    @staticmethod
    async def _read(relay: LineRelay) -> None:
        try:
            await relay._read()
        except Exception:  # a bug in a sink must not end everyone's output, nor the agent
            log.exception("relaying the output of %s failed", relay._agent_id)
            relay._sink = _ignore  # its lines still go to stdout


def _ignore(stream: str, lines: Sequence[str]) -> None:
    pass


def _readable(fd: int) -> bool:
    """Whether `fd` has something to read (or end of file) right now."""
    return fd >= 0 and bool(_events(fd))


def _hung_up(fd: int) -> bool:
    """Whether every writer of the pipe `fd` closed it, with nothing left to read."""
    return _events(fd) & (select.POLLIN | select.POLLHUP) == select.POLLHUP


def _events(fd: int) -> int:
    """What `poll` says of `fd` now (0: nothing)."""
    poll = select.poll()
    poll.register(fd, select.POLLIN)
    got = poll.poll(0)
    return got[0][1] if got else 0


_utf8 = codecs.getincrementaldecoder("utf-8")
_current: trio.lowlevel.RunVar[OutputPump | None] = trio.lowlevel.RunVar("output_pump")


def _pump() -> OutputPump:
    pump = _current.get(None)
    if pump is None:
        pump = OutputPump()
        _current.set(pump)
        trio.lowlevel.spawn_system_task(pump.run, name="supervisor output pump")
    return pump
