"""One agent's recent output: a bounded ring of lines, read by the API and followed live.

A slot makes its `RecentOutput` on the agent's first line (an agent that prints nothing
costs nothing) and keeps it across restarts, so the lines before a crash are still there;
it goes with the slot when the agent is removed (`close()` ends the followers).

Bounds (docs/operations.md, "A flood of output"): at most ``log_lines`` lines and
`MAX_CHARS` characters per agent, each line at most `LINE_LIMIT` characters (a longer one
arrives in pieces). Adding a batch of lines costs O(min(batch, log_lines)): only the tail
that can stay is stored, the rest is counted, so an agent printing flat out costs the
ring nothing more.

Followers do not get a queue each: every line has a sequence number, and a follower is a
cursor into the ring. One that falls behind by more than the ring holds is told how many
lines it missed (`since` returns them as `skipped`), and nothing waits on it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import NamedTuple

import trio

# A line longer than this (characters) is cut into pieces this long.
LINE_LIMIT = 65536
# Characters kept per agent, whatever log_lines says: with 64 KiB pieces that is at
# least four of them; with short lines the line count is what binds.
MAX_CHARS = 256 * 1024

# Called with (stream, lines) for every batch, before it is stored: the `log` ready
# probe's hook. Sync, must be cheap and must not block.
LineListener = Callable[[str, Sequence[str]], None]


class OutputLine(NamedTuple):
    seq: int  # 0 for the agent's first line, +1 for each line since
    ts: float  # wall time it was read (seconds since the epoch)
    stream: str  # "stdout", "stderr" or "log"
    msg: str


class RecentOutput:
    """The last lines of one agent. Sync methods never block; `wait_after` checkpoints."""

    __slots__ = ("_chars", "_listeners", "_wake", "closed", "lines", "max_lines", "next_seq")

    def __init__(self, max_lines: int) -> None:
        self.max_lines = max_lines
        self.lines: deque[OutputLine] = deque()
        self.next_seq = 0  # the sequence number the next line gets
        self.closed = False
        self._chars = 0
        self._wake: trio.Event | None = None  # made by a waiting follower
        self._listeners: tuple[LineListener, ...] = ()  # (the `log` ready probe's)

    def add(self, stream: str, msgs: Sequence[str], ts: float) -> None:
        """Store a batch of lines (each at most LINE_LIMIT characters) read at `ts`."""
        if not msgs:
            return
        for listener in self._listeners:
            listener(stream, msgs)
        count = len(msgs)
        keep = msgs[-self.max_lines :] if count > self.max_lines else msgs
        seq = self.next_seq + count - len(keep)
        lines = self.lines
        for msg in keep:
            lines.append(OutputLine(seq, ts, stream, msg))
            self._chars += len(msg)
            seq += 1
        self.next_seq += count
        while lines and (len(lines) > self.max_lines or self._chars > MAX_CHARS):
            self._chars -= len(lines.popleft().msg)
        self._wake_followers()

    def tail(self, count: int) -> list[OutputLine]:
        """The last `count` lines, oldest first."""
        if count <= 0:
            return []
        if count >= len(self.lines):
            return list(self.lines)
        return [self.lines[i] for i in range(len(self.lines) - count, len(self.lines))]

    def since(self, cursor: int) -> tuple[list[OutputLine], int]:
        """Lines numbered `cursor` or more, and how many of those the ring no longer has."""
        lines = self.lines
        first = lines[0].seq if lines else self.next_seq
        newer: list[OutputLine] = []
        for line in reversed(lines):
            if line.seq < cursor:
                break
            newer.append(line)
        newer.reverse()
        return newer, max(0, first - cursor)

    async def wait_after(self, cursor: int) -> None:
        """Return once a line numbered `cursor` or more exists, or the agent is gone."""
        while self.next_seq <= cursor and not self.closed:
            if self._wake is None:
                self._wake = trio.Event()
            await self._wake.wait()
        await trio.lowlevel.checkpoint()

    def listen(self, listener: LineListener) -> Callable[[], None]:
        """Call `listener` with every batch from now on; returns the way to stop it."""
        self._listeners = (*self._listeners, listener)

        def stop() -> None:
            listeners = list(self._listeners)
            listeners.remove(listener)
            self._listeners = tuple(listeners)

        return stop

    def close(self) -> None:
        """The agent was removed: end the followers."""
        self.closed = True
        self._wake_followers()

    def _wake_followers(self) -> None:
        if self._wake is not None:
            self._wake.set()
            self._wake = None


def cut(msg: str) -> list[str]:
    """`msg` in pieces of at most LINE_LIMIT characters (one piece for an empty line)."""
    if len(msg) <= LINE_LIMIT:
        return [msg]
    return [msg[i : i + LINE_LIMIT] for i in range(0, len(msg), LINE_LIMIT)]
