"""Moving each run's leader into its cgroup after the spawn, in bursts (docs/operations.md,
"Containment").

A write to ``cgroup.procs`` can wait in the kernel for an RCU grace period (~3.5 ms), and
a fork waits for a move under way: done right after each spawn, the moves would be paid
one grace period each, between the spawns. So `adopt` only asks, and the `Mover`'s task
does every move asked for since it last ran, back to back (a grace period is shared by
moves that follow each other), once the spawns of the moment are done: a wave of N starts
spawns first, then moves. A `Move` goes:

- pending: spawned, not moved yet; a stop now finds the run's processes by ancestry and
  mark as well as by cgroup (`AgentProcesses`);
- moved: the leader is in the cgroup, and then each of its descendants (moved before its
  own children are read, so one forked meanwhile is born in the cgroup);
- complete: what was orphaned before the move (forked while the leader was still in our
  cgroup, its parent gone before the sweep read it: re-parented to us) was found among our
  children by the run's process group or mark, and moved too. From then on the cgroup
  names every live process of the run, and a stop reads nothing else;
- failed (the leader exited before its move, or a write failed): by ancestry, as pending.

`Move.settle` is called before the leader is reaped: from then on its pid may be anyone's,
and it is never written again. The task also makes each cgroup (right before its move).
Once its run is over, an empty cgroup is kept for the agent's next run (a restart makes
and removes none); one that is not is removed. The parent's removal at the end removes
them all.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Container

import trio

from supervisor.logs import log
from supervisor.runners import cgroups, procfs
from supervisor.runners.orphans import run_mark


class Move:
    """One run's move into its cgroup (see the module's docstring)."""

    def __init__(self, agent_id: str, leader: int, mark: str, cgroup: str) -> None:
        self.agent_id = agent_id
        self.leader = leader
        self.mark = mark
        self.cgroup = cgroup
        self.state = "pending"  # -> moved -> complete; or failed
        self.settled = False  # the leader may be reaped: never write its pid again
        # Its cgroup.events, open from the move to the run's end: the end reads it with
        # one pread, not an open, a read and a close (docs/performance.md, crash -> running).
        self.events: int | None = None

    @property
    def procs(self) -> str:
        return self.cgroup + "/cgroup.procs"

    @property
    def complete(self) -> bool:
        return self.state == "complete"

    def settle(self) -> None:
        """No more writes for this run. Idempotent."""
        self.settled = True

    def _move_tree(self) -> None:
        """The leader, then its descendants, each before its children are read."""
        if self.settled:
            return
        try:
            with contextlib.suppress(FileExistsError):
                os.mkdir(self.cgroup)
            cgroups.write(self.procs, str(self.leader))
            self._move_below([self.leader])
        except OSError as exc:
            self.state = "failed"
            if exc.errno != errno.ESRCH:  # ESRCH: it exited already
                log.warning("%s: cannot move it into its cgroup (%s)", self.agent_id, exc)
            return
        self.state = "moved"

    def _move_below(self, roots: list[int]) -> None:
        while roots:
            parent = roots.pop()
            found: dict[int, int] = {}
            try:
                for pid in procfs.children(parent):
                    if procfs.open_pidfd(found, pid, parent=parent):
                        try:
                            cgroups.write(self.procs, str(pid))
                        except ProcessLookupError:
                            continue  # gone meanwhile
                        roots.append(pid)
            finally:
                for fd in found.values():
                    os.close(fd)

    def _adopt_orphans(self, pids: list[int]) -> None:
        """Move `pids` (our children of this run, found after `_move_tree`) and what is
        below them; then the run is complete."""
        if self.settled or self.state != "moved":
            return
        found: dict[int, int] = {}
        try:
            for pid in pids:
                if procfs.open_pidfd(found, pid, parent=procfs.own_pid()):
                    try:
                        cgroups.write(self.procs, str(pid))
                    except ProcessLookupError:
                        continue  # gone meanwhile
                    self._move_below([pid])
        except OSError as exc:
            self.state = "failed"
            log.warning("%s: cannot move it into its cgroup (%s)", self.agent_id, exc)
            return
        finally:
            for fd in found.values():
                os.close(fd)
        self.state = "complete"


class Mover:
    """Does the `Move`s asked for, in bursts, from a system task of the trio run."""

    def __init__(self, leaders: Container[int]) -> None:
        self._leaders = leaders  # agent leaders: never orphans of a run
        self._asked: list[Move | str | int] = []  # moves, cgroups to remove, fds to close
        self._wake: trio.Event | None = None  # set: the task has work
        self._root: trio.lowlevel.Task | None = None  # of the trio run the task is in
        self._free: dict[str, str] = {}  # by agent: its last cgroup, empty

    def reuse(self, agent_id: str) -> str | None:
        """The agent's last cgroup, if `release` kept it: no other run has it."""
        return self._free.pop(agent_id, None)

    def release(
        self, agent_id: str, cgroup: str, empty: bool = False, move: Move | None = None
    ) -> None:
        """The run of `cgroup` (and `move`) is over (settled): keep it for the agent's
        next run if it is empty (`empty`: the run's stop just saw it so), else remove it
        (what is still populated stays). The move's ``cgroup.events`` is closed after
        this step's spawns."""
        events = None if move is None else move.events
        if agent_id not in self._free and (empty or not procfs.cgroup_populated(cgroup, events)):
            self._free[agent_id] = cgroup
        else:
            self.ask(cgroup)
        if move is not None and events is not None:
            move.events = None
            self.ask(events)

    def ask(self, item: Move | str | int) -> None:
        """Do the move `item`, remove the cgroup `item` or close the descriptor `item`,
        soon (in a trio run)."""
        self._asked.append(item)
        root = trio.lowlevel.current_root_task()
        if self._wake is None or self._root is not root:  # none yet in this trio run
            self._wake, self._root = trio.Event(), root
            trio.lowlevel.spawn_system_task(self._run, self._wake, name="cgroup moves")
        self._wake.set()

    def close(self) -> None:
        """Do what was asked and not done yet; remove the cgroups kept for a next run
        (empty: one rmdir each, no listing). Idempotent."""
        self.burst()
        free, self._free = self._free, {}
        for cgroup in free.values():
            try:
                os.rmdir(cgroup)
            except OSError:  # an agent made cgroups in it, or something joined it
                cgroups.remove(cgroup)

    def do(self, move: Move) -> None:
        """`move`, now."""
        move._move_tree()
        self._complete([move] if move.state == "moved" else [])

    def burst(self) -> None:
        """Every move asked for, back to back; one read of our children for them all."""
        asked, self._asked = self._asked, []
        moves = [item for item in asked if isinstance(item, Move)]
        for move in moves:
            move._move_tree()
            if move.state == "moved" and move.events is None:
                move.events = _open_events(move.cgroup)
        self._complete([move for move in moves if move.state == "moved"])
        for item in asked:
            if isinstance(item, int):
                os.close(item)
        for item in asked:
            if isinstance(item, str):
                cgroups.remove(item)

    async def _run(self, wake: trio.Event) -> None:
        while True:
            await wake.wait()
            # The spawns of this moment first: the tasks runnable now run before this.
            await trio.lowlevel.cancel_shielded_checkpoint()
            wake = self._wake = trio.Event()
            try:
                self.burst()
            except Exception:  # never lose the task: those runs stay "by ancestry"
                log.exception("moving agents into their cgroups")

    def _complete(self, moves: list[Move]) -> None:
        """Find the orphans of `moves` among our children (after their sweeps: what was
        orphaned before is ours by then), move them, mark the runs complete."""
        if not moves:
            return
        by_group = {move.leader: move for move in moves}
        by_mark = {move.mark: move for move in moves}
        orphans: dict[Move, list[int]] = {}
        me = procfs.own_pid()
        # Orphans are re-parented to our main thread: its file alone lists them.
        for pid in procfs.thread_children(me, me):
            if pid in self._leaders:
                continue
            stat = procfs.stat(pid)
            if stat is None or stat[0] in "ZX":
                continue
            move = by_group.get(stat[2]) or by_mark.get(run_mark(pid))
            if move is not None:
                orphans.setdefault(move, []).append(pid)
        for move in moves:
            move._adopt_orphans(orphans.get(move, []))


_open_limit = 0  # half our descriptor limit: events held below it only


def _open_events(cgroup: str) -> int | None:
    """`cgroup`'s ``cgroup.events``, opened; None if it cannot be, or if the descriptor
    would be past half our limit (spawns need them more)."""
    global _open_limit
    if not _open_limit:
        try:
            _open_limit = max(os.sysconf("SC_OPEN_MAX") // 2, 64)
        except (OSError, ValueError):
            _open_limit = 512
    try:
        fd = os.open(cgroup + "/cgroup.events", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    if fd >= _open_limit:
        os.close(fd)
        return None
    return fd
