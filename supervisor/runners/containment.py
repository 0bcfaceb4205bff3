"""Containment: every process an agent started ends with it (docs/operations.md).

A process group is not a process tree: a child that calls ``setsid()`` or double-forks
leaves its agent's group, and ``killpg`` never reaches it again. So:

- The supervisor is a child subreaper (`become_subreaper`): orphans of its agents are
  re-parented to it rather than to init, and stay within reach.
- Each run of a process agent is an `AgentProcesses`: its leader, a mark in its
  environment (``SUPERVISOR_AGENT_RUN=…``, unique per run) and, where the supervisor may
  create cgroups (cgroup v2, writable: a root supervisor, a systemd unit with
  ``Delegate=yes``, a privileged container), a cgroup of its own.
- Its processes are then: the members of its cgroup; the leader's descendants, by
  ancestry (``/proc/PID/task/*/children``); and the supervisor's re-parented children
  that are in the leader's process group or carry the run's mark, with their own
  descendants. A stop signals all of them, waits for all of them, and SIGKILLs what is
  left (``cgroup.kill`` too), so a stop, a restart, a reload and a graceful shutdown
  leave nothing behind.

Every process is signalled through a pidfd opened while it was checked to be the
agent's, so a pid reused meanwhile is never hit. Zombies re-parented to the supervisor
are reaped by pidfd too, and the PID 1 / subreaper reaper of `supervisor.signals` skips
`LEADERS`: an agent leader's exit status is only ever taken by its own runner.

What each mode can miss: by ancestry, a process that left its group *and* cleared its
environment after its parent died (it is still killed when the supervisor stops); by
cgroup, nothing a process can do by itself, short of a process forked in the few
microseconds between the spawn and the move into the cgroup whose parent died in that
time too (the ancestry rules still cover it, unless it also cleared its environment).
"""

from __future__ import annotations

import ctypes
import itertools
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import trio

from supervisor.logs import log
from supervisor.runners import cgroups, procfs
from supervisor.runners.moves import Move, Mover
from supervisor.runners.orphans import (
    RUN_VARIABLE,
    Orphans,
    recent_orphans,
    scan_orphans,
    shared_orphans,
)

MODE_VARIABLE = "SUPERVISOR_CONTAINMENT"  # "auto" (default), "cgroup" or "ancestry"
PR_SET_CHILD_SUBREAPER = 36
_KILL = (signal.SIGKILL,)
Mode = Literal["cgroup", "ancestry"]

# The pids of every live agent leader of this process, from spawn until reaped by its
# runner: what no other reaper may take. Kept by `AgentProcesses`.
LEADERS: set[int] = set()
_RUNS: set[AgentProcesses] = set()  # live runs, for `kill_every_run`
_KILL_ROUNDS = 64  # SIGKILL sweeps before giving up on a tree that keeps forking
_KEPT_MAX = 1024  # pidfds a stop keeps per run (beyond, later sweeps find the rest)
_runs = itertools.count()
_token = os.urandom(6).hex()


def become_subreaper() -> bool:
    """Make this process a child subreaper (Linux ``prctl``); False if it cannot be."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


class Containment:
    """How this supervisor contains its agents' processes: by cgroup, or by ancestry.

    Made once at start (`setup`); `open_run` gives each spawn its `AgentProcesses`.
    `Containment()` is ancestry only, and needs nothing.
    """

    def __init__(self, cgroups: Path | None = None, why: str = "") -> None:
        self.cgroups = cgroups  # the parent of the agents' cgroups, ours alone
        self.why = why  # why there are no cgroups, for the start's log line
        self._mover = None if cgroups is None else Mover(LEADERS)

    @property
    def mode(self) -> Mode:
        return "ancestry" if self.cgroups is None else "cgroup"

    @classmethod
    def setup(cls) -> Containment:
        """Become a subreaper, and make a cgroup for our agents if we may."""
        if not become_subreaper():
            log.warning("cannot become a child subreaper: daemons of agents may escape")
        wanted = os.environ.get(MODE_VARIABLE, "auto")
        if wanted == "ancestry":
            return cls(None, f"{MODE_VARIABLE}=ancestry")
        try:
            return cls(cgroups.make_parent())
        except OSError as exc:
            why = f"no writable cgroup v2: {exc.strerror or exc}"
            if wanted == "cgroup":
                log.warning("%s=cgroup, but %s", MODE_VARIABLE, why)
            return cls(None, why)

    def describe(self) -> str:
        if self.cgroups is None:
            return f"by process ancestry and the agents' mark ({self.why})"
        return f"a cgroup v2 per agent, under {self.cgroups}"

    def open_run(self, agent_id: str) -> AgentProcesses:
        """A new run's processes: its mark, its cgroup if any (made with its move)."""
        n = next(_runs)
        mark = f"{procfs.own_pid()}-{_token}-{n}"
        cgroup = None
        if self.cgroups is not None and self._mover is not None:
            # the agent's last one, empty; or a new one, made by the mover
            cgroup = self._mover.reuse(agent_id) or f"{self.cgroups}/{agent_id}.{n}"
        return AgentProcesses(agent_id, mark, cgroup, self._mover)

    def close(self) -> None:
        """Stop moving; remove our (by now empty) parent cgroup. Idempotent."""
        if self._mover is not None:
            self._mover.close()
        if self.cgroups is not None:
            cgroups.remove(self.cgroups)


class AgentProcesses:
    """One run's processes: found, signalled, killed, waited for and reaped.

    Use: `open_run`, spawn with `environment()` added, `adopt(pid)` at once (no checkpoint
    in between), `signal`/`kill`/`wait_gone` while the leader is unreaped (its pid, and so
    its group's number, cannot be reused meanwhile), `settle` just before it is reaped,
    `close` once it is. Sync methods never block (but `settle`, for a move under way).
    """

    _seen_empty = False  # `wait_gone` or `kill` saw nothing left (since the leader exited)

    def __init__(
        self, agent_id: str, mark: str, cgroup: str | None, mover: Mover | None = None
    ) -> None:
        self.agent_id = agent_id
        self.mark = mark
        self.cgroup = cgroup  # its path (a str: ~260 B less per run than a Path)
        self.leader = 0
        self._mover = mover
        self._move: Move | None = None  # into the cgroup, by the mover's task
        self._needle = f"\0{RUN_VARIABLE}={mark}\0".encode()
        self._cgroup_line = ""
        # {pid: pidfd} of the processes a stop signalled, kept until they are gone: one
        # that is dying has no environment left to be recognised by, and must still be
        # waited for (and reaped, if it was re-parented to us).
        self._signalled: dict[int, int] = {}
        self._sent: tuple[int, ...] = ()  # the signals of the stop under way

    def environment(self) -> dict[bytes, bytes]:
        return {RUN_VARIABLE.encode(): self.mark.encode()}

    def adopt(self, leader: int) -> None:
        """The run's leader is spawned: register it; it is moved into the cgroup off
        the loop (`supervisor.runners.moves`)."""
        self.leader = leader
        LEADERS.add(leader)
        _RUNS.add(self)
        if self.cgroup is None:
            return
        self._move = Move(self.agent_id, leader, self.mark, self.cgroup)
        if self._mover is None:  # no mover: at once
            Mover(LEADERS).do(self._move)
        else:
            self._mover.ask(self._move)

    def settle(self) -> None:
        """The leader is about to be reaped: its pid may be anyone's after that, so no
        move may write it any more (waits for a write under way). Idempotent."""
        if self._move is not None:
            self._move.settle()

    def owns(self, pid: int) -> bool:
        """Whether `pid` is one of the run's processes (the leader included)."""
        if pid == self.leader:
            return True
        if self.cgroup is not None and not self._cgroup_line:  # once, on demand
            self._cgroup_line = "0::/" + cgroups.relative(self.cgroup)
        if self._cgroup_line and any(
            line == self._cgroup_line or line.startswith(self._cgroup_line + "/")
            for line in procfs.read(f"/proc/{pid}/cgroup", 4096).splitlines()
        ):
            return True
        me, child = procfs.own_pid(), pid
        for _ in range(64):  # up the ancestry: to the leader, or to a re-parented orphan
            if self._marked(child):
                return True
            stat = procfs.stat(child)
            if stat is None:
                return False
            _state, ppid, pgid = stat
            if ppid == self.leader or pgid == self.leader:
                return True
            if ppid in (me, 0, 1):
                return False
            child = ppid
        return False

    def pids(self) -> list[int]:
        """The run's live processes but the leader, now (for messages)."""
        with self._snapshot(scan_orphans) as found:
            return sorted(found.keys() | self._signalled.keys())

    def signal(self, *signals: int) -> None:
        """Send each of `signals` once to every process of the run outside the leader's
        group, which its runner has just signalled (``killpg``), now and when found later
        in this stop (`wait_gone`). Once: a second SIGTERM is "quit at once" to many
        programs, and a process that the group's handlers fork after the ``killpg`` (a
        TERM trap's ``systemd-notify EXTEND_TIMEOUT_USEC=…``) is not hit by it."""
        self._sent = signals
        found: dict[int, int] = {}  # (no `_snapshot`: this is every stop's first step)
        try:
            self._members(found)
            if not self.whole:
                self._claim(found, recent_orphans(LEADERS))
            self._keep(found)
        finally:
            for fd in found.values():
                _close(fd)

    def kill(self) -> bool:
        """SIGKILL every process of the run but the leader; whether there were any."""
        self._sent = _KILL
        for fd in self._signalled.values():
            procfs.send(fd, signal.SIGKILL)
        killed = set(self._signalled)
        for _ in range(_KILL_ROUNDS):  # until a sweep finds nothing new
            with self._snapshot(scan_orphans) as found:
                new = found.keys() - killed
                if new and self.cgroup is not None and not killed:
                    cgroups.kill(self.cgroup)  # at once, new forks too
                for pid in new:
                    procfs.send(found[pid], signal.SIGKILL)
                killed |= new
                self._keep(found)
            if not new:
                if not killed and self.whole:  # (a crash that left nothing: one read)
                    self._seen_empty = True  # and none more in `close`
                return bool(killed)
        return True

    async def wait_gone(self) -> None:
        """Wait until no process of the run (but the leader) is left; reap those that
        were re-parented to us. Cancellable; the caller bounds it. Call it once the
        leader has exited: what it left is re-parented to us by then."""
        while True:
            found: dict[int, int] = {}
            try:
                self._members(found, exited=True)
                if not self.whole:
                    # our children, after the walk: one read for every run of a stop wave
                    self._claim(found, await shared_orphans(LEADERS))
                self._keep(found)
            finally:
                for fd in found.values():
                    _close(fd)
            if not self._signalled:
                self._seen_empty = True  # (set on the instance at the end of its run only)
                return
            for pid, fd in list(self._signalled.items()):
                await trio.lowlevel.wait_readable(fd)
                procfs.reap(fd)
                del self._signalled[pid]
                _close(fd)

    def _keep(self, found: dict[int, int]) -> None:
        """Keep the pidfds of `found` (taken out of it) for the rest of the stop; the
        newly found get the stop's signals, but for members of the leader's group (the
        runner's ``killpg`` sent them; SIGKILL goes to everyone)."""
        for pid in list(found):
            if pid not in self._signalled and len(self._signalled) < _KEPT_MAX:
                fd = self._signalled[pid] = found.pop(pid)
                if self._sent and (self._sent == _KILL or not self._in_group(pid)):
                    for sig in self._sent:
                        procfs.send(fd, sig)

    def _in_group(self, pid: int) -> bool:
        try:
            return os.getpgid(pid) == self.leader
        except OSError:  # gone (its pidfd is kept: a reused pid is never signalled)
            return False

    def close(self) -> None:
        """The leader is reaped: forget it; its cgroup goes to its next run if empty."""
        self.settle()
        LEADERS.discard(self.leader)
        _RUNS.discard(self)
        for fd in self._signalled.values():
            _close(fd)
        self._signalled.clear()
        if self._mover is not None and self.cgroup is not None:
            self._mover.release(self.agent_id, self.cgroup, self._seen_empty, self._move)
        elif self.cgroup is not None:
            cgroups.remove(self.cgroup)

    @contextmanager
    def _snapshot(self, orphans: Callable[[set[int]], Orphans]) -> Iterator[dict[int, int]]:
        """{pid: pidfd} of the run's live processes but the leader; pidfds closed after.
        `orphans` reads our own children (or gives a recent read), after the walk."""
        found: dict[int, int] = {}
        try:
            self._members(found, exited=True)  # (a kill, mostly after the leader's exit)
            if not self.whole:
                self._claim(found, orphans(LEADERS))
            yield found
        finally:
            for fd in found.values():
                _close(fd)

    @property
    def whole(self) -> bool:
        """Whether the cgroup names every live process of the run (its move is complete:
        nothing left before it could have joined it). Zombies it does not list are ours
        to reap, by `supervisor.signals` or through the pidfds `_keep` holds."""
        return self._move is not None and self._move.complete

    def _members(self, found: dict[int, int], exited: bool = False) -> None:
        """`exited`: the leader has likely exited, so that an empty cgroup is told by one
        read (`cgroup.events`; if it is populated, the members are read too)."""
        events = None if self._move is None else self._move.events
        if self.cgroup is not None and (not exited or procfs.cgroup_populated(self.cgroup, events)):
            # its members: every descendant, wherever it went
            for pid in procfs.cgroup_members(self.cgroup):
                if pid != self.leader:
                    procfs.open_pidfd(found, pid)
        if not self.whole:  # and by ancestry until its move is complete
            _descendants(found, [self.leader])

    def _claim(self, found: dict[int, int], orphans: Orphans) -> None:
        """Add what was re-parented to us (read after `_members`' walk: one re-parented
        during the walk is seen there): in the leader's group, or marked."""
        for pid in orphans.zombies.pop(self.leader, ()):
            procfs.reap_pid(pid)
        # Checked again through a pidfd: the read may be a few milliseconds old.
        me, roots = procfs.own_pid(), []
        for pid in orphans.by_group.get(self.leader, ()):
            if pid not in found and procfs.open_pidfd(found, pid, parent=me, group=self.leader):
                roots.append(pid)
        for pid in orphans.by_mark.get(self.mark, ()):
            if pid not in found and procfs.open_pidfd(found, pid, parent=me):
                if self._marked(pid):
                    roots.append(pid)
                else:
                    os.close(found.pop(pid))
        _descendants(found, roots)

    def _marked(self, pid: int) -> bool:
        return self._needle in b"\0" + procfs.read_bytes(f"/proc/{pid}/environ")


def _descendants(found: dict[int, int], roots: list[int]) -> None:
    """Add every live descendant of `roots` to `found` (by ancestry)."""
    while roots:
        parent = roots.pop()
        for pid in procfs.children(parent):
            if pid not in found and procfs.open_pidfd(found, pid, parent=parent):
                roots.append(pid)


def _close(pidfd: int) -> None:
    trio.lowlevel.notify_closing(pidfd)
    os.close(pidfd)


def live_runs() -> list[AgentProcesses]:
    """Every live run (for reading what agents cost, `supervisor.usage`)."""
    return list(_RUNS)


def kill_every_run() -> None:
    """SIGKILL the processes of every live run (a second SIGTERM, shutdown_timeout)."""
    for run in list(_RUNS):
        run.kill()
