"""Signals, and reaping orphans when the supervisor is PID 1.

One task owns the signal receiver (`handle_signals`). SIGHUP reloads; the first SIGTERM
or SIGINT stops everything gracefully; the next one SIGKILLs every agent's process group.

As PID 1 (a container's entrypoint) the supervisor also inherits every orphan of the
container, and as a child subreaper (docs/operations.md, "Containment") every orphan of
its agents; it must reap them, or they stay zombies forever. It must not reap its own
agents, though: trio waits for a child by polling its pidfd and then calls
``Popen.wait()``; if a blind ``waitpid(-1)`` took that status first, Python would report
exit code 0. So on SIGCHLD we reap only the zombies that no slot owns: the kernel names
our zombies one at a time without reaping them (``waitid(WNOWAIT)``), so a pass costs a
call per orphan, not a read of every child (~0.9 ms at 500 agents); only when the one it
names is an agent's (its runner has yet to reap it) do we list our zombies in /proc to
look past it. A child that exits between being spawned and being known to its slot
could still be taken: its status is kept in `REAPED` for the process runner to claim.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Container, Iterator
from pathlib import Path

import trio

from supervisor.logs import log

# Exit statuses (as Popen.returncode) of children reaped here, by pid, for a runner
# whose Popen.wait() met ECHILD. Only the last few hundred are kept.
REAPED: dict[int, int] = {}
_REAPED_MAX = 512
# SIGCHLD is handled this long after it came: a wave of exits is one pass over our
# children (a list as long as the number of agents), and the runners of the agents that
# exited (on to their restart) go first (docs/performance.md, crash -> running).
REAP_DELAY = 0.005


def is_pid1() -> bool:
    return os.getpid() == 1


async def handle_signals(
    reload: Callable[[], object],
    shutdown: Callable[[], None],
    kill_all: Callable[[], None],
    agent_pids: Callable[[], Container[int]],
    *,
    reap: bool | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Own the process's signals until cancelled.

    Args:
      reload: called on SIGHUP.
      shutdown: called on the first SIGTERM / SIGINT.
      kill_all: called on every later SIGTERM / SIGINT.
      agent_pids: the pids of live agents (PID 1 reaping leaves those alone).
      reap: reap orphans on SIGCHLD (default: as PID 1); a child subreaper must too.
    """
    wanted = [signal.SIGHUP, signal.SIGTERM, signal.SIGINT]
    pid1 = is_pid1() if reap is None else reap
    if pid1:
        wanted.append(signal.SIGCHLD)
    stops = 0
    with trio.open_signal_receiver(*wanted) as signals:
        task_status.started()
        if pid1:
            reap_orphans(agent_pids())  # whatever exited before we listened
        async for signum in signals:
            if signum == signal.SIGCHLD:
                await trio.sleep(REAP_DELAY)  # more SIGCHLDs meanwhile: one pass
                reap_orphans(agent_pids())
            elif signum == signal.SIGHUP:
                log.info("SIGHUP: reloading")
                reload()
            else:
                stops += 1
                name = signal.Signals(signum).name
                if stops == 1:
                    log.info("%s: stopping gracefully (send it again to kill at once)", name)
                    if pid1:
                        _quiet_exits()
                    shutdown()
                else:
                    log.warning("%s again: killing every agent's process group", name)
                    kill_all()


def _quiet_exits() -> None:
    """From the graceful stop on, our children's exits raise no SIGCHLD: each agent's
    stop reaps its own processes (through pidfds), and a stop wave of N agents would
    otherwise be N signals, each a handler run and a wake-up of this task, and a pass over
    our children every few ms (~20 ms of loop time for 500 agents). What other orphans
    leave are zombies that go to init with us (docs/operations.md, "Containment").
    SIG_DFL, never SIG_IGN: with SIG_IGN the kernel would reap every child itself, agents
    included, and their exit statuses would be lost."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)


def reap_orphans(agent_pids: Container[int]) -> int:
    """Reap our zombie children that are not agents; return how many were reaped."""
    reaped = 0
    while (pid := _a_zombie()) is not None:
        if pid in agent_pids:  # its runner's: look past it, in /proc
            return reaped + _reap_listed(agent_pids)
        took = _reap(pid)
        if took is False:  # (never: it was named as exited)
            return reaped + _reap_listed(agent_pids)
        if took:
            reaped += 1
    return reaped


def _a_zombie() -> int | None:
    """One of our exited children, not reaped; None if there is none."""
    try:
        info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:  # no children at all
        return None
    return None if info is None else info.si_pid


def _reap_listed(agent_pids: Container[int]) -> int:
    """`reap_orphans` by a listing of our zombies in /proc (agents skipped)."""
    return sum(1 for pid in _zombie_children(agent_pids) if _reap(pid))


def _reap(pid: int) -> bool | None:
    """Reap our child `pid` if it has exited (its status kept): whether it was reaped;
    None if it is no longer ours (reaped by its owner meanwhile)."""
    try:
        got, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    if got != pid:
        return False
    _remember(pid, status)
    return True


def _remember(pid: int, status: int) -> None:
    """Keep the status of a child that may be an agent not yet known to its slot."""
    REAPED[pid] = os.waitstatus_to_exitcode(status)  # -N for signal N, like Popen
    while len(REAPED) > _REAPED_MAX:
        del REAPED[next(iter(REAPED))]


def _zombie_children(skip: Container[int]) -> Iterator[int]:
    """Our zombie children not in `skip`. Agents are skipped before their state is read,
    so a pass costs one read per thread plus one per non-agent child."""
    me = os.getpid()
    for children in Path(f"/proc/{me}/task").glob("*/children"):
        try:
            pids = [int(p) for p in children.read_text().split()]
        except OSError:
            continue
        for pid in pids:
            if pid not in skip and _is_zombie(pid):
                yield pid


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The command name may hold spaces and parentheses: the state follows the last ')'.
    return stat[stat.rindex(")") + 2 :].startswith("Z")
