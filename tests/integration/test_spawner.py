"""The spawner thread (`supervisor.runners.spawner`), with real processes and threads.

A spawn alone, with a descriptor table as large as a supervisor of many agents has, is
made from a thread whose table holds 0-2 only; one in a burst is made in the caller's
thread. Either way the agent must not see the difference: its output, its exit, its
signal mask, its errors.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from supervisor.runners import Outcome, spawn, spawner
from supervisor.runners.process import run_process

from .test_process_runner import Recorder
from .test_spawn import agent, hooks, printed

__all__ = ["hooks"]  # the fixture, shared


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The test's cwd (the quick spawn's condition), with ~200 descriptors held open, as
    a supervisor of ~70 agents holds them: a new pipe's number is then well over
    `spawner.LARGE_TABLE`."""
    monkeypatch.chdir(tmp_path)
    spawn._found.clear()
    held = [fd for _ in range(100) for fd in os.pipe()]
    yield tmp_path
    for fd in held:
        os.close(fd)
    spawn._found.clear()


def lone() -> None:
    """The next spawn comes long after the last."""
    spawner._last_spawn = time.monotonic() - 3600.0


def the_thread() -> int:
    assert spawner._spawner is not None, "no spawner thread was started"
    return spawner._spawner.native_id


def status_of(pid: int) -> dict[str, str]:
    text = Path(f"/proc/{pid}/status").read_text()
    return dict(line.split(":", 1) for line in text.splitlines())


def children_of(tid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/self/task/{tid}/children").read_text().split()]


async def test_a_lone_spawn_is_made_by_the_thread_and_the_agent_sees_no_difference(
    here: Path, hooks: Recorder
) -> None:
    lone()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_process, agent(here, "sleep", "5"), hooks)
            await hooks.is_launched.wait()
            [pid] = hooks.pids
            assert pid in children_of(the_thread())
            status = status_of(pid)
            nursery.cancel_scope.cancel()
    # Our signal mask, not the thread's (every signal blocked); SIGPIPE not ignored.
    assert int(status["SigBlk"], 16) == 0
    assert not int(status["SigIgn"], 16) & (1 << (signal.SIGPIPE - 1))
    lone()
    outcome = await run_process(agent(here, "sh", "-c", "echo out; echo err >&2; exit 3"), hooks)
    assert outcome == Outcome(code=3)
    assert printed(hooks) == ["out"]
    assert printed(hooks, "stderr") == ["err"]


async def test_a_spawn_right_after_another_is_made_in_the_callers_thread(
    here: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spawner, "LONE_AFTER", 600.0)  # "right after", however loaded
    first, second = Recorder(), Recorder()
    lone()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for hooks in (first, second):
                nursery.start_soon(run_process, agent(here, "sleep", "5"), hooks)
                await hooks.is_launched.wait()
            assert first.pids[0] in children_of(the_thread())
            assert second.pids[0] in children_of(threading.get_native_id())
            nursery.cancel_scope.cancel()


def test_the_thread_has_a_table_of_three_and_blocks_every_signal(here: Path) -> None:
    there = spawner._the_spawner()
    assert there is not None
    tid = there.native_id
    assert sorted(map(int, os.listdir(f"/proc/self/task/{tid}/fd"))) == [0, 1, 2]
    status = Path(f"/proc/self/task/{tid}/status").read_text()
    blocked = int(next(ln for ln in status.splitlines() if ln.startswith("SigBlk:")).split()[1], 16)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGHUP, signal.SIGUSR1):
        assert blocked & (1 << (sig - 1))


async def test_a_program_that_cannot_run_fails_there_as_here(here: Path, hooks: Recorder) -> None:
    lost = here / "lost.sh"
    lost.write_text("#!/no/such/shell\n")
    lost.chmod(0o755)
    lone()
    outcome = await run_process(agent(here, "./lost.sh"), hooks)
    assert outcome == Outcome(
        start_failed=True, error="cannot run './lost.sh': its #! interpreter was not found"
    )
    assert hooks.pids == []
    assert spawner._spawner is not None  # it went there, and failed there
