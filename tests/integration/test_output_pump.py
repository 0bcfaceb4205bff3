"""The output pump: one task reads every process agent's pipes.

Real children, real pipes and pidfds; the pump is `supervisor.runners.pipes.OutputPump`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import pytest
import trio
import trio.testing

from supervisor.runners import Outcome, process
from supervisor.runners.pipes import LineRelay
from supervisor.runners.process import run_process

from .test_process_runner import Recorder, spec, wait_until_gone


def tasks() -> list[trio.lowlevel.Task]:
    """Every task of this trio run, system tasks included."""
    found, todo = [], [trio.lowlevel.current_root_task()]
    while todo:
        task = todo.pop()
        assert task is not None
        found.append(task)
        todo.extend(child for nursery in task.child_nurseries for child in nursery.child_tasks)
    return found


class Counting(Recorder):
    """Sets `enough` once it has `want` lines."""

    def __init__(self, want: int) -> None:
        super().__init__()
        self.want = want
        self.enough = trio.Event()

    def output(self, stream: str, lines: Sequence[str]) -> None:
        super().output(stream, lines)
        if len(self.output_lines) >= self.want:
            self.enough.set()


def pumps() -> int:
    return sum(task.name == "supervisor output pump" for task in tasks())


async def test_running_children_cost_no_task_each_and_the_pump_ends_with_them(
    tmp_path: Path,
) -> None:
    count = 30
    recorders = [Counting(2) for _ in range(count)]
    before = len(tasks())
    assert pumps() == 0
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for i, hooks in enumerate(recorders):
                command = f"echo up {i}; echo err {i} >&2; exec sleep 1000"
                nursery.start_soon(run_process, spec(tmp_path, "sh", "-c", command), hooks)
            for hooks in recorders:
                await hooks.enough.wait()
            # Each run is its own task (started here) and nothing else: one pump for all
            # their pipes, where a relay task per pipe would be 2 * count more.
            assert len(tasks()) == before + count + 1
            assert pumps() == 1
            nursery.cancel_scope.cancel()
    for i, hooks in enumerate(recorders):
        assert sorted(hooks.output_lines) == [("stderr", f"err {i}"), ("stdout", f"up {i}")]
        assert hooks.pids[0] is not None
        wait_until_gone(hooks.pids[0])
    await trio.testing.wait_all_tasks_blocked()
    assert pumps() == 0  # no pipe, no waiter: no pump and no epoll descriptor


class Failing(Recorder):
    def output(self, stream: str, lines: Sequence[str]) -> None:
        raise RuntimeError("a broken sink")


async def test_a_failing_sink_is_logged_and_harms_no_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broken, healthy = Failing(), Recorder()
    chatty = "for i in 1 2 3 4 5; do echo line $i; sleep 0.05; done"
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:

            async def broken_run() -> None:
                outcome = await run_process(spec(tmp_path, "sh", "-c", chatty), broken)
                assert outcome == Outcome(code=0)  # the run is unharmed: still read

            nursery.start_soon(broken_run)
            outcome = await run_process(spec(tmp_path, "sh", "-c", chatty), healthy)
    assert outcome == Outcome(code=0)
    assert healthy.output_lines == [("stdout", f"line {i}") for i in range(1, 6)]
    failures = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in failures] == ["relaying the output of t failed"]


async def test_an_exit_is_seen_while_another_child_floods(tmp_path: Path) -> None:
    flood, quick = Counting(10000), Recorder()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_process, spec(tmp_path, "yes"), flood)
            await flood.enough.wait()
            outcome = await run_process(spec(tmp_path, "sh", "-c", "echo done; exit 4"), quick)
            nursery.cancel_scope.cancel()
    assert outcome == Outcome(code=4)
    assert quick.output_lines == [("stdout", "done")]
    assert flood.pids[0] is not None
    wait_until_gone(flood.pids[0])


async def test_output_is_kept_while_the_pump_is_busy_with_another_pipe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A drain gives up on a pipe that stalls for DRAIN_TIMEOUT; one the pump has not
    # come to yet (it is relaying a flood, line by line through `logging`) has not.
    caplog.set_level(logging.INFO, logger="supervisor")
    monkeypatch.setattr(process, "DRAIN_TIMEOUT", 0.001)
    flood = Counting(1000)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_process, spec(tmp_path, "yes"), flood)
            await flood.enough.wait()
            quick = [Recorder()]
            for hooks in quick:
                command = spec(tmp_path, "sh", "-c", "echo done; exit 4")
                assert await run_process(command, hooks) == Outcome(code=4)
            nursery.cancel_scope.cancel()
    assert [hooks.output_lines for hooks in quick] == [[("stdout", "done")]]


async def test_a_pipe_whose_writers_are_gone_ends_at_once_unless_output_is_left() -> None:
    """`LineRelay.ended`: the pipes of a leader that just exited end without a pass of
    the pump (the run's end then waits for none), but never with output left unread."""
    got: list[str] = []

    def sink(stream: str, lines: Sequence[str]) -> None:
        got.extend(lines)

    empty_r, empty_w = os.pipe()
    full_r, full_w = os.pipe()
    os.write(full_w, b"last words\npartial")
    empty, full = (LineRelay("t", "stdout", fd, sink) for fd in (empty_r, full_r))
    empty.start()
    full.start()
    os.close(empty_w)
    os.close(full_w)
    # No checkpoint since: the pump has read neither.
    assert empty.ended()
    assert not full.ended()  # what is left is the pump's to relay
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(empty_r)  # closed, and the pump no longer watches it
    with trio.fail_after(10):
        await full.wait_eof()
    assert got == ["last words", "partial"]
    assert full.ended()
