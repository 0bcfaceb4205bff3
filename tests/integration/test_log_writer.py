"""The stdout writer: bounded when stdout is stuck, and it says what it dropped.

A real pipe as "stdout": nobody reads it until the end, so the writer thread blocks on
it at once, as on a terminal that is not read.
"""

from __future__ import annotations

import os
import threading

from supervisor import logs


async def test_a_stuck_stdout_drops_agent_lines_counts_them_and_says_so() -> None:
    read_fd, write_fd = os.pipe()
    out = os.fdopen(write_fd, "w")
    logs.dropped.clear()
    logs.setup("text", stream=out)
    try:
        lines = ["y"] * 10_000
        for _ in range(500):  # 5,000,000 lines: far more than the queue may hold
            await logs.relay_lines("yes", "stdout", lines)
        assert logs.dropped["yes"] > 4_000_000
        writer = logs._writer
        assert writer is not None
        assert writer._queued <= logs.QUEUE_CHARS  # the bound held
        got: list[bytes] = []
        reader = threading.Thread(target=lambda: got.append(_read_all(read_fd)))
        reader.start()
        logs.log.info("the supervisor's own line")
    finally:
        logs.shutdown()
        out.close()
    reader.join()
    text = got[0].decode()
    assert "yes | y\n" in text
    assert "lines of agents' output were not written here" in text
    assert "the supervisor's own line" in text


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)


async def test_control_characters_of_agents_are_escaped_in_text_logs() -> None:
    read_fd, write_fd = os.pipe()
    out = os.fdopen(write_fd, "w")
    logs.setup("text", stream=out)
    try:
        await logs.relay_lines("a", "stdout", ["\x1b[2Jgone\rforged"])
    finally:
        logs.shutdown()
        out.close()
    text = _read_all(read_fd).decode()
    assert "a | \\x1b[2Jgone\\rforged\n" in text


def test_the_loop_hands_its_lines_to_the_writer_when_it_waits() -> None:
    """A line logged in a step of the trio run reaches stdout once the loop waits, not
    while the step goes on: the writer thread, woken, would take the GIL in the middle
    of it (a restart's, between the exit and the spawn)."""
    import select

    import trio

    read_fd, write_fd = os.pipe()
    out = os.fdopen(write_fd, "w")
    poller = select.poll()
    poller.register(read_fd, select.POLLIN)

    async def main() -> None:
        said = ["as it was"]
        logs.log.warning("in the step: %s", said)
        said.append("changed after")  # the line says what was logged, not this
        # Still in the step: the writer, had it been handed the line, would have written
        # it well within this time (it does nothing else).
        assert poller.poll(300) == []
        await trio.lowlevel.checkpoint()  # the loop goes round: the line is handed over
        assert poller.poll(10_000) != []

    logs.setup("text", stream=out)
    try:
        trio.run(main, instruments=[logs.LoopFlush()])
    finally:
        logs.shutdown()
        out.close()
    assert "supervisor | WARNING in the step: ['as it was']\n" in _read_all(read_fd).decode()


def test_a_step_that_logs_without_end_holds_a_bounded_number_of_records() -> None:
    """An in-process agent that logs in a loop and never yields: its records are handed
    to the (bounded) queue as they come past LATER_MAX, not held until the step ends."""
    import trio

    read_fd, write_fd = os.pipe()
    out = os.fdopen(write_fd, "w")  # never read until the end: the queue fills, then drops
    held: list[int] = []

    async def main() -> None:
        writer = logs._writer
        assert writer is not None
        for n in range(50_000):
            logs.log.warning("line %d of a step that never ends", n)
            if n % 1000 == 0:
                held.append(len(writer._later))

    logs.setup("text", stream=out)
    dropped_before = logs.own_dropped
    reader = threading.Thread(target=lambda: _read_all(read_fd))
    try:
        trio.run(main, instruments=[logs.LoopFlush()])
    finally:
        reader.start()
        logs.shutdown()
        out.close()
        reader.join()
    assert max(held) <= logs.LATER_MAX
    assert logs.own_dropped > dropped_before  # the queue's bound held: the rest counted
