"""Containment: no process an agent started outlives it, whatever group or session it is in.

The agents (tests/agents/escape.py) leave their process group the ways daemons do: a
double fork, a `setsid` child, a subtree three levels deep. Each way an agent stops is
tried: a stop, an exit of the leader by itself, a restart, a reload that changes it, a
graceful SIGTERM of a real `supervisor run`; in both modes, by cgroup and by ancestry.
After the stop, /proc must hold none of them.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from supervisor.manifest import AgentSpec
from supervisor.runners import Outcome, procfs
from supervisor.runners.containment import LEADERS, PR_SET_CHILD_SUBREAPER, Containment
from supervisor.runners.process import run_process

from ..harness import alive, lines, wait_until
from .test_process_runner import Recorder

ESCAPE = str(Path(__file__).parents[1] / "agents" / "escape.py")
COUNT = str(Path(__file__).parents[1] / "agents" / "count_signals.py")
ESCAPED = {"daemon": 1, "setsid": 1, "deep": 3}  # processes each mode leaves its group with


MODES = [
    "ancestry",
    pytest.param(
        "cgroup",
        marks=pytest.mark.skipif(
            os.geteuid() != 0, reason="needs a writable cgroup v2 (root, or Delegate=yes)"
        ),
    ),
]


@pytest.fixture
def subreaper() -> Iterator[None]:
    """This test process as a child subreaper, as `supervisor run` is, for one test."""
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    yield
    libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


@pytest.fixture
def containment(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Containment]:
    monkeypatch.setenv("SUPERVISOR_CONTAINMENT", request.param)
    made = Containment.setup()
    if made.mode != request.param:
        pytest.skip(f"no {request.param} containment here: {made.why}")
    yield made
    made.close()


def escaped(pidfile: Path, count: int) -> list[int]:
    return wait_until(
        lambda: len(got := [int(p) for p in lines(pidfile)]) >= count and got,
        what=f"{count} escaped processes in {pidfile.name}",
    )


def escape_spec(tmp_path: Path, mode: str, then: str = "stay", **keys: Any) -> AgentSpec:
    command = (sys.executable, ESCAPE, mode, str(tmp_path / "pids"), then)
    return AgentSpec(id="e", kind="process", command=command, root=tmp_path, cwd=tmp_path, **keys)


def left_running(pids: list[int]) -> list[int]:
    return [pid for pid in pids if alive(pid)]


# -- the runner: every process of the run ends with it ----------------------------------


@pytest.mark.parametrize("containment", MODES, indirect=True)
@pytest.mark.parametrize("mode", list(ESCAPED))
async def test_a_stop_ends_what_left_the_group(
    tmp_path: Path, subreaper: None, containment: Containment, mode: str
) -> None:
    hooks = Recorder()
    pids: list[int] = []
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                lambda: run_process(escape_spec(tmp_path, mode), hooks, containment=containment)
            )
            await hooks.is_launched.wait()
            pids = await trio.to_thread.run_sync(escaped, tmp_path / "pids", ESCAPED[mode])
            assert all(os.getsid(pid) != os.getsid(0) for pid in pids)  # they did escape
            nursery.cancel_scope.cancel()
    assert left_running(pids) == []
    assert hooks.stop_outcomes == [Outcome(signal=signal.SIGTERM)]


@pytest.mark.parametrize("containment", MODES, indirect=True)
@pytest.mark.parametrize("mode", list(ESCAPED))
async def test_a_leader_that_exits_takes_its_daemons_along(
    tmp_path: Path, subreaper: None, containment: Containment, mode: str
) -> None:
    hooks = Recorder()
    spec = escape_spec(tmp_path, mode, "exit")
    with trio.fail_after(20):
        # The leader exits once every escaped process has recorded itself.
        outcome = await run_process(spec, hooks, containment=containment)
    assert outcome == Outcome(code=0)
    pids = [int(p) for p in lines(tmp_path / "pids")]
    assert len(pids) == ESCAPED[mode]
    assert left_running(pids) == []


def events_held() -> list[str]:
    """The cgroup.events files we hold a descriptor of."""
    held = []
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # the listing's own descriptor
            continue
        if target.endswith("/cgroup.events"):
            held.append(target)
    return held


@pytest.mark.parametrize("containment", MODES[1:], indirect=True)
async def test_a_crashed_run_reads_its_cgroup_through_the_descriptor_it_held(
    tmp_path: Path, subreaper: None, containment: Containment
) -> None:
    """Once moved, a run holds its cgroup.events open: its end tells an empty cgroup by
    one pread (docs/performance.md, crash -> running), and here a populated one, whose
    daemon it kills. The descriptor is closed once the run is over."""
    hooks = Recorder()
    spec = escape_spec(tmp_path, "daemon")
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            got: list[Outcome] = []

            async def run() -> None:
                got.append(await run_process(spec, hooks, containment=containment))

            nursery.start_soon(run)
            await hooks.is_launched.wait()
            pids = await trio.to_thread.run_sync(escaped, tmp_path / "pids", 1)
            held = await trio.to_thread.run_sync(
                lambda: wait_until(events_held, what="a descriptor of its cgroup.events")
            )
            assert len(held) == 1
            assert f"/{spec.id}." in held[0]
            leader = hooks.pids[0]
            assert leader is not None
            os.kill(leader, signal.SIGKILL)  # a crash: the daemon stays behind, at first
    assert got == [Outcome(signal=signal.SIGKILL)]
    assert left_running(pids) == []
    await trio.testing.wait_all_tasks_blocked()  # (the moves' task closes it)
    assert events_held() == []


@pytest.mark.parametrize("containment", MODES, indirect=True)
async def test_a_stop_signals_each_process_once(
    tmp_path: Path, subreaper: None, containment: Containment
) -> None:
    # The leader's group gets the stop signal by killpg, the escapee by its pidfd: a
    # second one is "quit at once" to many programs (a real-time signal: none merges).
    spec = AgentSpec(
        id="c",
        kind="process",
        command=(sys.executable, COUNT, str(tmp_path)),
        stop_signal=signal.SIGRTMIN,
        root=tmp_path,
        cwd=tmp_path,
    )
    hooks = Recorder()
    everyone = ("leader", "member", "escapee")
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: run_process(spec, hooks, containment=containment))
            await hooks.is_launched.wait()
            await trio.to_thread.run_sync(
                lambda: wait_until(
                    lambda: all((tmp_path / f"{who}.ready").exists() for who in everyone),
                    what="the three counting",
                )
            )
            nursery.cancel_scope.cancel()
    assert hooks.stop_outcomes == [Outcome(code=0)]
    counts = {who: (tmp_path / f"{who}.count").stat().st_size for who in everyone}
    assert counts == {"leader": 1, "member": 1, "escapee": 1}


@pytest.mark.parametrize("containment", MODES, indirect=True)
async def test_stubborn_escapees_get_sigkill_after_stop_timeout(
    tmp_path: Path, subreaper: None, containment: Containment
) -> None:
    script = f"setsid sh -c 'trap \"\" TERM; echo $$ >> {tmp_path}/pids; sleep 1000 & wait' & wait"
    spec = AgentSpec(
        id="e",
        kind="process",
        command=("sh", "-c", script),
        root=tmp_path,
        cwd=tmp_path,
        stop_timeout=0.5,
    )
    hooks = Recorder()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: run_process(spec, hooks, containment=containment))
            pids = await trio.to_thread.run_sync(escaped, tmp_path / "pids", 1)
            nursery.cancel_scope.cancel()
    assert left_running(pids) == []
    # The leader (sh) ended by SIGTERM, but the run needed SIGKILL for the rest.
    assert hooks.stop_outcomes == [Outcome(signal=signal.SIGTERM, killed=True)]


@pytest.mark.parametrize("containment", MODES, indirect=True)
async def test_the_leader_is_registered_until_it_is_reaped(
    tmp_path: Path, subreaper: None, containment: Containment
) -> None:
    hooks = Recorder()
    spec = escape_spec(tmp_path, "setsid", "exit")
    outcome = await run_process(spec, hooks, containment=containment)
    assert outcome == Outcome(code=0)
    assert hooks.pids[0] not in LEADERS


async def test_a_leader_dying_during_a_snapshot_leaves_no_orphan_unseen(
    tmp_path: Path, subreaper: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop signals the leader's group first, so the leader may die while the run's
    processes are being read from /proc: its setsid child, re-parented to us meanwhile,
    must still be found (it was missed when our own children were read first)."""
    monkeypatch.setenv("SUPERVISOR_CONTAINMENT", "ancestry")
    made = Containment.setup()
    run = made.open_run("e")
    env = {**os.environ, **{k.decode(): v.decode() for k, v in run.environment().items()}}
    command = [sys.executable, ESCAPE, "setsid", str(tmp_path / "pids")]
    leader = await trio.lowlevel.open_process(command, env=env, process_group=0)
    run.adopt(leader.pid)
    (child,) = await trio.to_thread.run_sync(escaped, tmp_path / "pids", 1)
    real_children = procfs.children

    def leader_dies_after_the_first_read(pid: int) -> list[int]:
        found = real_children(pid)
        monkeypatch.setattr(procfs, "children", real_children)
        leader.send_signal(signal.SIGKILL)
        os.waitid(os.P_PID, leader.pid, os.WEXITED | os.WNOWAIT)  # a zombie: child re-parented
        return found

    monkeypatch.setattr(procfs, "children", leader_dies_after_the_first_read)
    try:
        assert child in run.pids()
    finally:
        os.kill(child, signal.SIGKILL)
        await leader.wait()
        run.close()
        made.close()
