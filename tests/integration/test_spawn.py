"""The quick spawn (``os.posix_spawn``, `supervisor.runners.spawn`) with real processes.

An agent whose `cwd` is the supervisor's and that has no `user` or `group` is spawned by
posix_spawn: each test here runs in its own folder (`monkeypatch.chdir`), so that its
agents are. It must behave as the Popen spawn does: output, exit, process group,
signals, stdin, signal dispositions, descriptors (the same errors for a program that
cannot be run: test_process_runner's start failures, on both spawns); an agent with
another `cwd` is still spawned by Popen.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from supervisor.health.lag import SLOT_TASK_PREFIX
from supervisor.manifest import AgentSpec, Backoff
from supervisor.runners import Outcome, spawn
from supervisor.runners.dispatch import make_runner
from supervisor.runners.process import run_process
from supervisor.slot import Slot

from ..harness import group_members
from .test_process_runner import SIGNALS_AGENT, Recorder, wait_until_gone


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.chdir(tmp_path)  # the supervisor's cwd: an agent's cwd by default here
    spawn._found.clear()
    yield tmp_path
    spawn._found.clear()


@pytest.fixture
def hooks() -> Iterator[Recorder]:
    recorder = Recorder()
    yield recorder
    for pid in recorder.pids:
        assert pid is not None
        wait_until_gone(pid)


def agent(folder: Path, *command: str, **keys: Any) -> AgentSpec:
    return AgentSpec(id="q", kind="process", command=command, root=folder, cwd=folder, **keys)


def printed(hooks: Recorder, stream: str = "stdout") -> list[str]:
    return [line for name, line in hooks.output_lines if name == stream]


def by_posix_spawn(program: str) -> bool:
    """Whether `program` was found (and so spawned) by the quick spawn."""
    return any(name == program for name, _ in spawn._found)


async def test_output_exit_code_and_stdin(here: Path, hooks: Recorder) -> None:
    command = 'echo out; echo err >&2; read x; echo "stdin:$?"; pwd; exit 3'
    with trio.fail_after(5):
        outcome = await run_process(agent(here, "sh", "-c", command), hooks)
    assert outcome == Outcome(code=3)
    assert printed(hooks) == ["out", "stdin:1", str(here)]
    assert printed(hooks, "stderr") == ["err"]
    assert by_posix_spawn("sh")


async def test_it_leads_a_process_group_of_its_own_in_our_session(
    here: Path, hooks: Recorder
) -> None:
    with trio.fail_after(5):
        await run_process(agent(here, "cat", "/proc/self/stat"), hooks)
    [stat] = printed(hooks)
    fields = stat[stat.rindex(")") + 2 :].split()
    pgid, session = int(fields[2]), int(fields[3])
    assert pgid == hooks.pids[0]
    assert session == os.getsid(0)
    assert by_posix_spawn("cat")


async def test_sigpipe_and_sigxfsz_are_not_ignored(here: Path, hooks: Recorder) -> None:
    # Python ignores SIGPIPE; an exec keeps what is ignored, so the spawn must reset it.
    assert signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN
    with trio.fail_after(5):
        await run_process(agent(here, "cat", "/proc/self/status"), hooks)
    [ignored] = [line.split()[1] for line in printed(hooks) if line.startswith("SigIgn:")]
    mask = int(ignored, 16)
    assert not mask & (1 << (signal.SIGPIPE - 1))
    assert not mask & (1 << (signal.SIGXFSZ - 1))


async def test_a_stop_signal_reaches_it(here: Path, hooks: Recorder) -> None:
    spec = agent(here, sys.executable, SIGNALS_AGENT, ready="notify", stop_signal=signal.SIGINT)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_process, spec, hooks)
            await hooks.is_ready.wait()
            nursery.cancel_scope.cancel()
    assert printed(hooks) == ["stopped by SIGINT"]
    assert by_posix_spawn(sys.executable)


async def test_its_group_is_killed_when_it_exits(here: Path, hooks: Recorder) -> None:
    command = "sleep 1000 >/dev/null 2>&1 & echo $!"
    with trio.fail_after(5):
        assert await run_process(agent(here, "sh", "-c", command), hooks) == Outcome(code=0)
    assert group_members(hooks.pids[0] or 0) == []


async def test_descriptors_we_were_given_do_not_reach_it(
    here: Path, hooks: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    inherited = os.open(os.devnull, os.O_RDONLY)
    try:
        os.set_inheritable(inherited, True)  # as if the supervisor had been given it
        monkeypatch.setattr(spawn, "_swept", False)  # as at a supervisor's first spawn
        check = f"[ -e /proc/$$/fd/{inherited} ] && echo leaked || echo closed"
        with trio.fail_after(5):
            await run_process(agent(here, "sh", "-c", check), hooks)
        assert printed(hooks) == ["closed"]
        assert not os.get_inheritable(inherited)
    finally:
        os.close(inherited)


async def test_a_program_found_once_and_gone_is_looked_for_again(
    here: Path, hooks: Recorder
) -> None:
    first, second = here / "first", here / "second"
    for folder in (first, second):
        folder.mkdir()
    env = {"PATH": f"{first}:{second}:/usr/bin:/bin"}

    def tool(folder: Path) -> None:
        (folder / "tool").write_text(f"#!/bin/sh\necho {folder.name}\n")
        (folder / "tool").chmod(0o755)

    tool(first)
    spec = agent(here, "tool", env=env)
    with trio.fail_after(10):
        assert await run_process(spec, hooks) == Outcome(code=0)
        assert by_posix_spawn("tool")
        (first / "tool").unlink()
        tool(second)
        assert await run_process(spec, hooks) == Outcome(code=0)
        (second / "tool").unlink()
        gone = await run_process(spec, hooks)
    assert printed(hooks) == ["first", "second"]
    assert gone == Outcome(start_failed=True, error="command not found: 'tool'")


async def test_an_agent_with_another_cwd_is_spawned_by_popen(here: Path, hooks: Recorder) -> None:
    elsewhere = here / "elsewhere"
    elsewhere.mkdir()
    spec = attrs.evolve(agent(here, "pwd"), cwd=elsewhere)
    with trio.fail_after(5):
        assert await run_process(spec, hooks) == Outcome(code=0)
    assert printed(hooks) == [str(elsewhere)]
    assert not by_posix_spawn("pwd")


class Steps(trio.abc.Instrument):
    """Counts the steps of the slot tasks."""

    def __init__(self) -> None:
        self.count = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task.name.startswith(SLOT_TASK_PREFIX):
            self.count += 1


async def test_a_crash_with_no_backoff_is_respawned_in_the_step_that_saw_it(here: Path) -> None:
    # Nothing else runs between seeing the exit and the new spawn (docs/performance.md).
    spec = attrs.evolve(
        agent(here, "sh", "-c", "exit 3"),
        restart="always",
        backoff=Backoff(initial=0.0, jitter=0.0),
        max_restarts=3,
    )
    steps = Steps()
    seen: list[tuple[str, int | None, int]] = []

    def changed(slot: Slot) -> None:
        if not seen or seen[-1][:2] != (slot.state, slot.pid):
            seen.append((slot.state, slot.pid, steps.count))

    trio.lowlevel.add_instrument(steps)
    slot = Slot(spec, make_runner(), on_change=changed)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            slot.launch(nursery)
            await slot.wait_stopped()
    trio.lowlevel.remove_instrument(steps)
    assert slot.state == "failed"
    backoffs = [step for state, _, step in seen if state == "backoff"]
    first_seen = {pid: step for _, pid, step in reversed(seen) if pid is not None}
    respawns = sorted(first_seen.values())[1:]
    assert len(backoffs) == 3
    assert respawns == backoffs


async def test_a_supervisor_whose_cwd_was_removed_still_spawns(
    here: Path, hooks: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    gone = here / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    with trio.fail_after(5):
        assert await run_process(agent(here, "pwd"), hooks) == Outcome(code=0)
    assert printed(hooks) == [str(here)]


async def test_an_immediate_restart_keeps_its_bookkeeping_in_order(here: Path) -> None:
    """The exit recorded, the restart counted, backoff then starting then the new pid,
    for each restart (done at the new spawn, in the same step); and when the next start
    is refused, the exit is still recorded and the slot says why it stopped."""
    spec = attrs.evolve(
        agent(here, "sh", "-c", "exit 3"),
        restart="always",
        backoff=Backoff(initial=0.0, jitter=0.0),
        max_restarts=10,
    )
    starts = 0

    def may_start(agent_id: str) -> str | None:
        nonlocal starts
        starts += 1
        return "fenced" if starts > 6 else None  # (two checks per start: 3 starts)

    seen: list[tuple[str, str, bool, int, int]] = []

    def changed(slot: Slot) -> None:
        seen.append((slot.state, slot.reason, slot.pid is not None, slot.restarts, len(slot.exits)))

    slot = Slot(spec, make_runner(), on_change=changed, may_start=may_start)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            slot.launch(nursery)
            await slot.wait_stopped()
    assert slot.state == "stopped"
    assert slot.reason == "not started: fenced"
    assert [rec.code for rec in slot.exits] == [3, 3, 3]
    assert slot.restarts == 3
    states = [(state, pid, restarts, exits) for state, _, pid, restarts, exits in seen]
    backoff = "exited with code 3; restart in 0.00s"
    assert [s for s in seen if s[0] == "backoff"] == [
        ("backoff", backoff, False, n, n) for n in (1, 2, 3)
    ]
    # Each restart: backoff, starting, launched (the pid), in that order.
    for n in (1, 2):
        i = states.index(("backoff", False, n, n))
        assert states[i + 1] == ("starting", False, n, n)
        assert states[i + 2] == ("starting", True, n, n)
    # The refused one: its exit recorded, then stopped, without a start.
    assert states[-3:-1] == [("backoff", False, 3, 3), ("stopped", False, 3, 3)]
