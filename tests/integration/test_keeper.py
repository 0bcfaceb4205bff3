"""The no-orphans keeper, with a real supervisor stand-in that we SIGKILL.

These tests are sync: they drive plain processes and poll /proc with deadlines.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.keeper import Keeper

from ..harness import alive, group_members, wait_until

ROOT = Path(__file__).parents[2]

# A supervisor stand-in: starts a keeper and two groups, registers both, unregisters
# the second (the line goes with the next registration: a third group's), prints
# "KEEPER GUARDED UNGUARDED" and waits to be killed.
STAND_IN = """\
import subprocess, sys, time
from supervisor.keeper import Keeper
keeper = Keeper.start(shell=SHELL)
guarded = subprocess.Popen(["sh", "-c", "sleep 1000 & sleep 1000"], process_group=0)
unguarded = subprocess.Popen(["sleep", "1000"], process_group=0)
keeper.register(guarded.pid)
keeper.register(unguarded.pid)
keeper.unregister(unguarded.pid)
third = subprocess.Popen(["sleep", "1000"], process_group=0)
keeper.register(third.pid)
print(keeper.pid, guarded.pid, unguarded.pid, third.pid, flush=True)
time.sleep(1000)
"""


# Both programs: keeper.sh (the default) and program.py (where there is no /bin/sh).
@pytest.fixture(params=[True, False], ids=["sh", "python"])
def shell(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.fixture
def keeper(shell: bool) -> Iterator[Keeper]:
    with Keeper.start(shell=shell) as keeper:
        yield keeper


def stand_in_source(program: str, shell: bool) -> str:
    return f"SHELL = {shell}\n" + program


@pytest.fixture
def group() -> Iterator[int]:
    """A `sleep 1000` leading its own group; killed at teardown if still there."""
    process = subprocess.Popen(["sleep", "1000"], process_group=0)
    yield process.pid
    process.kill()
    process.wait()


def test_groups_die_when_the_supervisor_is_sigkilled(shell: bool) -> None:
    stand_in = subprocess.Popen(
        [sys.executable, "-c", stand_in_source(STAND_IN, shell)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert stand_in.stdout is not None
    keeper_pid, guarded, unguarded, third = map(int, stand_in.stdout.readline().split())
    try:
        wait_until(lambda: len(group_members(guarded)) == 3)  # sh and its two sleeps
        stand_in.kill()
        stand_in.wait()
        wait_until(lambda: group_members(guarded) == [] and group_members(third) == [])
        wait_until(lambda: not alive(keeper_pid))
        assert alive(unguarded)  # unregistered: not the keeper's to kill
    finally:
        stand_in.stdout.close()
        for pgid in (guarded, unguarded, third):
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_close_lets_the_keeper_go_without_killing(keeper: Keeper, group: int) -> None:
    keeper.register(group)
    keeper.close()
    assert keeper._process.returncode == 0
    assert alive(group)


def ignored_signals(pid: int) -> set[signal.Signals]:
    with open(f"/proc/{pid}/status") as f:
        mask = int(next(line for line in f if line.startswith("SigIgn:")).split()[1], 16)
    return {sig for sig in signal.Signals if mask & (1 << (sig - 1))}


def test_the_keeper_ignores_termination_signals(keeper: Keeper, group: int) -> None:
    deaf_to = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
    wait_until(lambda: deaf_to <= ignored_signals(keeper.pid))  # its program has started
    keeper.register(group)
    for sig in deaf_to:
        os.kill(keeper.pid, sig)
    keeper.close()
    assert keeper._process.returncode == 0  # not -SIGTERM: it was alive to hear "q"
    assert alive(group)


def test_writes_never_block_even_when_the_keeper_stalls(keeper: Keeper) -> None:
    os.kill(keeper.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        for pgid in range(100_000, 115_000):  # far more than a pipe holds
            keeper.register(pgid)  # (each write carries the last unregistration)
            keeper.unregister(pgid)
        assert time.monotonic() - started < 1.0
    finally:
        os.kill(keeper.pid, signal.SIGCONT)
    keeper.close()  # flushes what waited in memory, then "q"
    assert keeper._process.returncode == 0


def test_once_quiet_unregistrations_are_not_sent(tmp_path: Path) -> None:
    """What the keeper reads (a `cat` stands in for it): after `quiet` (a graceful
    shutdown under way) no "-PGID" line, registrations still, then "q"."""
    read_end, write_end = os.pipe()
    with open(tmp_path / "lines", "wb") as out:
        cat = subprocess.Popen(["cat"], stdin=read_end, stdout=out)
    os.close(read_end)
    keeper = Keeper(cat, write_end, "mark")
    keeper.register(111)
    keeper.unregister(111)
    keeper.quiet()
    keeper.register(222)
    keeper.unregister(222)
    keeper.close()
    words = [line.split()[0] for line in (tmp_path / "lines").read_text().splitlines()]
    assert words == ["+111", "-111", "+222", "q"]


def test_close_is_idempotent(keeper: Keeper) -> None:
    keeper.close()
    keeper.close()
    keeper.register(1234)  # after close: ignored, never raises


# A stand-in that starts a keeper and a marked child it never registers (as a
# supervisor killed between fork and the "+PGID" line would leave it), prints both pids.
UNREGISTERED = """\
import os, subprocess, sys, time
from supervisor.keeper import MARK_VARIABLE, Keeper
keeper = Keeper.start(shell=SHELL)
env = dict(os.environ, **{MARK_VARIABLE: keeper.mark})
child = subprocess.Popen(["sleep", "1000"], process_group=0, env=env)
print(keeper.pid, child.pid, flush=True)
time.sleep(1000)
"""

# A stand-in that registers a group whose leader has already exited while a member
# (unmarked) lives on: the keeper cannot prove the number still names that group.
LEADER_GONE = """\
import subprocess, sys, time
from supervisor.keeper import Keeper
keeper = Keeper.start(shell=SHELL)
leader = subprocess.Popen(["sh", "-c", "sleep 1000 & echo $!"], process_group=0,
                          stdout=subprocess.PIPE, text=True)
member = int(leader.stdout.readline())
leader.wait()
keeper.register(leader.pid)
print(keeper.pid, member, flush=True)
time.sleep(1000)
"""


def run_stand_in(program: str, shell: bool) -> tuple[subprocess.Popen[str], int, int]:
    stand_in = subprocess.Popen(
        [sys.executable, "-c", stand_in_source(program, shell)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert stand_in.stdout is not None
    keeper_pid, child = map(int, stand_in.stdout.readline().split())
    return stand_in, keeper_pid, child


def test_a_marked_child_never_registered_dies_with_the_supervisor(shell: bool) -> None:
    stand_in, keeper_pid, child = run_stand_in(UNREGISTERED, shell)
    try:
        assert alive(child)
        stand_in.kill()
        stand_in.wait()
        wait_until(lambda: not alive(child), what="the unregistered marked child killed")
        wait_until(lambda: not alive(keeper_pid))
    finally:
        assert stand_in.stdout is not None
        stand_in.stdout.close()
        if alive(child):
            os.kill(child, signal.SIGKILL)


def test_a_group_whose_leader_is_gone_is_not_killed_by_number(shell: bool) -> None:
    stand_in, keeper_pid, member = run_stand_in(LEADER_GONE, shell)
    try:
        stand_in.kill()
        stand_in.wait()
        wait_until(lambda: not alive(keeper_pid), what="the keeper done")
        # The leader's pidfd showed it had exited, so the keeper did not killpg a number
        # that could name another group by now; the member has no mark, so it lives.
        assert alive(member)
    finally:
        assert stand_in.stdout is not None
        stand_in.stdout.close()
        if alive(member):
            os.kill(member, signal.SIGKILL)


def test_the_keeper_does_not_inherit_the_api_token(
    monkeypatch: pytest.MonkeyPatch, shell: bool
) -> None:
    monkeypatch.setenv("SUPERVISOR_TOKEN", "secret")
    with Keeper.start(shell=shell) as keeper:
        wait_until(lambda: Path(f"/proc/{keeper.pid}/cmdline").read_bytes().count(b"\0") > 3)
        assert b"SUPERVISOR_TOKEN" not in Path(f"/proc/{keeper.pid}/environ").read_bytes()


# A stand-in that registers a live, unmarked group with a start time that is not its
# leader's: what the keeper sees if the number was reused by another process after the
# registration (the real supervisor reads the start time while the leader is its child).
REUSED = """\
import subprocess, sys, time
from supervisor.keeper import Keeper
keeper = Keeper.start(shell=True)
other = subprocess.Popen(["sleep", "1000"], process_group=0)
keeper._send(b"+%d 1\\n" % other.pid)
print(keeper.pid, other.pid, flush=True)
time.sleep(1000)
"""


def test_the_shell_keeper_never_kills_a_group_whose_leader_started_at_another_time() -> None:
    stand_in, keeper_pid, other = run_stand_in(REUSED, True)
    try:
        stand_in.kill()
        stand_in.wait()
        wait_until(lambda: not alive(keeper_pid), what="the keeper done")
        assert alive(other)
    finally:
        assert stand_in.stdout is not None
        stand_in.stdout.close()
        if alive(other):
            os.killpg(other, signal.SIGKILL)


def test_the_shell_keeper_is_a_fraction_of_a_python_one() -> None:
    def rss_kib(pid: int) -> int:
        status = Path(f"/proc/{pid}/status").read_text()
        return int(next(ln for ln in status.splitlines() if ln.startswith("VmRSS:")).split()[1])

    with Keeper.start(shell=True) as small, Keeper.start(shell=False) as big:
        for keeper in (small, big):  # both programs are running (they ignore SIGTERM)
            wait_until(lambda k=keeper: signal.SIGTERM in ignored_signals(k.pid))
        assert Path(f"/proc/{small.pid}/exe").resolve().name in ("dash", "sh", "bash", "busybox")
        assert rss_kib(small.pid) * 3 < rss_kib(big.pid)


def test_an_unregistration_goes_with_the_next_line() -> None:
    """`unregister` writes nothing (a write wakes the keeper, and the one after a crash
    would come right before the respawn): the next registration, or "q", carries it."""
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    keeper = Keeper(subprocess.Popen(["true"]), write_end, "mark")
    try:
        keeper.register(111)
        assert os.read(read_end, 4096).split()[0] == b"+111"
        keeper.unregister(111)
        with pytest.raises(BlockingIOError):
            os.read(read_end, 4096)  # nothing was written
        keeper.register(222)
        assert [line.split()[0] for line in os.read(read_end, 4096).splitlines()] == [
            b"-111",
            b"+222",
        ]
        keeper.unregister(222)
        keeper.close()
        assert os.read(read_end, 4096).split() == [b"-222", b"q"]
    finally:
        os.close(read_end)
