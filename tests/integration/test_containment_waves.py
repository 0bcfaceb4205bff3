"""Containment at scale: cgroup moves off the loop, and what a stop wave reads.

A run's leader is moved into its cgroup in a burst after the spawns
(`supervisor.runners.moves`); what it forked before the move, orphaned meanwhile, must join the cgroup too, and once the move is
complete a stop reads the cgroup alone. A wave of stops reads our own children once, not
once per run (docs/operations.md, "Containment").
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from supervisor.runners import procfs
from supervisor.runners.containment import LEADERS, AgentProcesses, Containment
from supervisor.runners.moves import Move, Mover

from ..harness import alive, lines, wait_until
from .test_containment import ESCAPE, subreaper  # noqa: F401 (a fixture)

pytestmark = pytest.mark.usefixtures("subreaper")


def cgroup_of(pid: int) -> str:
    return procfs.read(f"/proc/{pid}/cgroup", 4096).strip().splitlines()[-1]


@pytest.fixture
def cgroup_mode(monkeypatch: pytest.MonkeyPatch) -> Iterator[Containment]:
    monkeypatch.setenv("SUPERVISOR_CONTAINMENT", "cgroup")
    made = Containment.setup()
    if made.mode != "cgroup":
        pytest.skip(f"no cgroup containment here: {made.why}")
    yield made
    made.close()


def spawn(run: AgentProcesses, *command: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, **{k.decode(): v.decode() for k, v in run.environment().items()}}
    return subprocess.Popen(command, env=env, process_group=0)


def orphaned(pidfile: Path) -> int:
    """The pid the escape agent recorded, once it is re-parented to us."""
    (pid,) = wait_until(lambda: [int(p) for p in lines(pidfile)], what="the daemon's pid")
    wait_until(lambda: (procfs.stat(pid) or ("", 0, 0))[1] == os.getpid(), what="orphaned")
    return pid


@pytest.mark.parametrize("group", ["own group", "setsid"])
async def test_what_was_orphaned_before_the_move_joins_the_cgroup(
    tmp_path: Path, cgroup_mode: Containment, group: str
) -> None:
    """The worst case of the window before the move: the leader forked, and the parent
    of what it forked is gone, before the move. Found by its group, or by the run's mark
    (the daemon did setsid), among our children; moved; the run is then complete."""
    run = cgroup_mode.open_run("e")
    run._mover = None  # the move at adopt, in this thread: after the orphaning, surely
    pidfile = tmp_path / "pids"
    if group == "setsid":
        leader = spawn(run, sys.executable, ESCAPE, "daemon", str(pidfile))
    else:
        script = f"sh -c 'sleep 1000 & echo $! > {pidfile}'; exec sleep 1000"
        leader = spawn(run, "sh", "-c", script)
    daemon = orphaned(pidfile)
    assert cgroup_of(daemon) == cgroup_of(os.getpid())  # still in ours: it escaped
    run.adopt(leader.pid)
    try:
        assert run._move is not None
        assert run._move.complete
        assert run.cgroup is not None
        assert cgroup_of(daemon).endswith("/" + Path(run.cgroup).name)
        assert cgroup_of(leader.pid).endswith("/" + Path(run.cgroup).name)
        assert daemon in run.pids()
    finally:
        run.kill()
        leader.kill()
        leader.wait()
        run.close()
    wait_until(lambda: not alive(daemon), what="the daemon killed")


async def test_a_complete_run_is_stopped_by_its_cgroup_alone(
    tmp_path: Path, cgroup_mode: Containment, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = cgroup_mode.open_run("e")
    leader = spawn(run, sys.executable, ESCAPE, "daemon", str(tmp_path / "pids"))
    run.adopt(leader.pid)  # moved by the mover's task
    daemon = orphaned(tmp_path / "pids")
    move = run._move
    assert move is not None
    await trio.testing.wait_all_tasks_blocked()  # the mover's task has had its turn
    assert move.complete

    def no_reading_our_children(pid: int, tid: int) -> list[int]:
        raise AssertionError("a complete run's stop read our children")

    monkeypatch.setattr(procfs, "thread_children", no_reading_our_children)
    run.signal(signal.SIGTERM)
    leader.terminate()
    await trio.to_thread.run_sync(leader.wait)
    with trio.fail_after(10):
        await run.wait_gone()
    run.settle()
    run.close()
    assert not alive(daemon)


async def test_a_cgroup_the_agent_made_below_its_own_is_stopped_too(
    tmp_path: Path, cgroup_mode: Containment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An agent with rights to its cgroup may make cgroups below it and move processes
    there (cgroup.procs then lists none of them): they are found, signalled and waited
    for all the same, and the cgroups are removed at the end."""
    run = cgroup_mode.open_run("nested")
    leader = spawn(run, sys.executable, ESCAPE, "daemon", str(tmp_path / "pids"))
    run.adopt(leader.pid)
    daemon = orphaned(tmp_path / "pids")
    await trio.testing.wait_all_tasks_blocked()  # the mover's task has had its turn
    assert run._move is not None
    assert run._move.complete
    assert run.cgroup is not None
    inner = Path(run.cgroup) / "inner"
    inner.mkdir()  # what the agent could do itself
    (inner / "cgroup.procs").write_text(str(daemon))
    assert str(daemon) not in (Path(run.cgroup) / "cgroup.procs").read_text().split()
    monkeypatch.setattr(procfs, "thread_children", lambda pid, tid: [])  # the cgroup alone
    run.signal(signal.SIGTERM)
    leader.terminate()
    await trio.to_thread.run_sync(leader.wait)
    with trio.fail_after(10):
        await run.wait_gone()  # returns once the daemon, in `inner`, is gone
    assert not alive(daemon)
    run.settle()
    run.close()
    cgroup_mode.close()
    assert not await trio.Path(run.cgroup).exists()


def test_a_settled_move_never_writes_the_pid(cgroup_mode: Containment) -> None:
    """Once settled (the leader is about to be reaped), its pid may be anyone's."""
    assert cgroup_mode.cgroups is not None
    cgroup = cgroup_mode.cgroups / "settled"
    cgroup.mkdir()
    bystander = subprocess.Popen(["sleep", "1000"])
    try:
        move = Move("e", bystander.pid, "mark", str(cgroup))
        move.settle()
        Mover(LEADERS).do(move)
        assert move.state == "pending"
        assert procfs.cgroup_members(cgroup) == []
    finally:
        bystander.kill()
        bystander.wait()
        cgroup.rmdir()


async def test_a_stop_wave_reads_our_children_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Twenty runs whose leaders exited, waited for at once: one read of our children."""
    monkeypatch.setenv("SUPERVISOR_CONTAINMENT", "ancestry")
    made = Containment.setup()
    runs, leaders = [], []
    for i in range(20):
        run = made.open_run(f"a{i}")
        leader = spawn(run, "true")
        run.adopt(leader.pid)
        runs.append(run)
        leaders.append(leader)
    for leader in leaders:  # exited, not reaped: zombies, as when a stop waits
        wait_until(lambda pid=leader.pid: (procfs.stat(pid) or "Z")[0] == "Z")
    reads = []
    real = procfs.thread_children

    def counted(pid: int, tid: int) -> list[int]:
        reads.append(pid)
        return real(pid, tid)

    monkeypatch.setattr(procfs, "thread_children", counted)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for run in runs:
                nursery.start_soon(run.wait_gone)
    assert len(reads) == 1
    for run, leader in zip(runs, leaders, strict=True):
        leader.wait()
        run.close()
    made.close()


async def test_a_restart_reuses_its_empty_cgroup_and_no_two_runs_share_one(
    cgroup_mode: Containment,
) -> None:
    first = cgroup_mode.open_run("a")
    leader = spawn(first, "sleep", "1000")
    first.adopt(leader.pid)
    move = first._move
    assert move is not None
    await trio.testing.wait_all_tasks_blocked()  # the mover's task has had its turn
    assert move.complete
    leader.kill()
    await trio.to_thread.run_sync(leader.wait)
    first.settle()
    first.close()
    again = cgroup_mode.open_run("a")
    other = cgroup_mode.open_run("a")  # while `again` is open: a cgroup of its own
    assert again.cgroup == first.cgroup
    assert other.cgroup not in (None, first.cgroup)
    again.close()
    other.close()
