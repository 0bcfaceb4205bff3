"""`supervisor.signals` with real signals sent to this process and real zombie children."""

from __future__ import annotations

import os
import signal
from functools import partial
from pathlib import Path

import pytest
import trio

from supervisor import signals

from ..harness import wait_until


async def test_sighup_reloads_the_first_sigterm_stops_and_the_next_kills() -> None:
    calls: list[str] = []
    changed = trio.Event()

    def record(what: str) -> None:
        nonlocal changed
        calls.append(what)
        changed.set()
        changed = trio.Event()

    async def until(n: int) -> None:
        while len(calls) < n:
            await changed.wait()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(
                signals.handle_signals,
                lambda: record("reload"),
                lambda: record("shutdown"),
                lambda: record("kill_all"),
                set,
            )
            for signum, n in [(signal.SIGHUP, 1), (signal.SIGTERM, 2), (signal.SIGINT, 3)]:
                os.kill(os.getpid(), signum)
                await until(n)
            os.kill(os.getpid(), signal.SIGTERM)
            await until(4)
            nursery.cancel_scope.cancel()
    assert calls == ["reload", "shutdown", "kill_all", "kill_all"]


async def test_from_the_graceful_stop_on_exits_raise_no_sigchld_and_statuses_stay() -> None:
    """A reaper stops handling SIGCHLD at the first SIGTERM (each agent's stop reaps its
    own), by SIG_DFL and not SIG_IGN: a child's exit status is still there to take."""
    stopped = trio.Event()
    before = signal.getsignal(signal.SIGCHLD)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(
                partial(signals.handle_signals, reap=True),
                lambda: None,
                stopped.set,
                lambda: None,
                set,
            )
            assert signal.getsignal(signal.SIGCHLD) not in (signal.SIG_DFL, signal.SIG_IGN)
            os.kill(os.getpid(), signal.SIGTERM)
            await stopped.wait()
            assert signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL
            assert _exit_status_of_a_child(3) == 3
            nursery.cancel_scope.cancel()
    assert signal.getsignal(signal.SIGCHLD) == before


def _exit_status_of_a_child(code: int) -> int:
    child = os.posix_spawn("/bin/sh", ["sh", "-c", f"exit {code}"], os.environ)
    return os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])


def _zombie(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2 :].startswith("Z")


@pytest.mark.parametrize("agent_first", [False, True], ids=["orphan-first", "agent-first"])
def test_reap_orphans_reaps_zombies_that_are_not_agents_and_keeps_their_status(
    agent_first: bool,
) -> None:
    # The kernel names the older zombie first: an agent's, not to be taken, is looked
    # past (in /proc).
    if agent_first:
        agent = os.posix_spawn("/bin/sh", ["sh", "-c", "exit 3"], os.environ)
    orphan = os.posix_spawn("/bin/sh", ["sh", "-c", "exit 7"], os.environ)
    if not agent_first:
        agent = os.posix_spawn("/bin/sh", ["sh", "-c", "exit 3"], os.environ)
    try:
        wait_until(lambda: _zombie(orphan) and _zombie(agent), what="both exited")
        assert signals.reap_orphans({agent}) >= 1  # others of ours may be reaped too
        assert signals.REAPED[orphan] == 7
        assert _zombie(agent)  # an agent's status is its runner's to take
    finally:
        os.waitpid(agent, 0)
        signals.REAPED.pop(orphan, None)


def test_is_pid1_is_false_here() -> None:
    assert not signals.is_pid1()
