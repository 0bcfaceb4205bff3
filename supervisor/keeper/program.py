"""The keeper's program, run as ``python -I -S program.py supervisor-keeper MARK``
where there is no ``/bin/sh`` (elsewhere keeper.sh, the same in POSIX sh, is run).

It imports only ``os``, ``select``, ``signal``, ``sys`` and ``time`` (no site, no
supervisor package: ``-I -S`` keeps it about as cheap as a Python process gets), reads
lines from stdin until end of file, and then kills what the supervisor left behind:

- ``+PGID`` or ``+PGID BY``: a process group was born; its leader's pid is PGID.
  The keeper opens a pidfd on the leader at once, so that it later knows whether that
  pid is still the same process (BY, a time the leader had started by, is for
  keeper.sh, which has no pidfds; this program does not need it).
- ``-PGID``: the group is gone; forget it (its number may be reused).
- ``q``: a graceful exit; kill nothing.

At end of file (the supervisor died, however) each registered group is SIGKILLed, but
only while its leader's pidfd proves the leader is still the process registered: a
group whose leader is gone may have been emptied and its number reused by an unrelated
group, which must never be killed. Members of such a group are not lost: every agent
process carries the mark in its environment, and the scan that follows SIGKILLs each
process whose environment holds it, repeating until a few scans in a row find nothing
(a child between fork and exec shows no environment of its own yet).
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time

MARK_VARIABLE = "SUPERVISOR_KEEPER_MARK"
QUIET_SCANS = 3  # scans in a row that find nothing before the keeper exits
SCAN_PAUSE = 0.05  # seconds between scans


def main(argv: list[str]) -> int:
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)
    leaders = read_registrations(0)
    if leaders is None:
        return 0  # "q": the supervisor stopped every group itself
    for pgid, pidfd in leaders.items():
        kill_group_if_same(pgid, pidfd)
    kill_marked(MARK_VARIABLE + "=" + argv[2])
    return 0


def read_registrations(fd: int) -> dict[int, int | None] | None:
    """Read ``+PGID`` / ``-PGID`` lines until end of file: {pgid: leader's pidfd}.

    Returns None on ``q``.
    """
    leaders: dict[int, int | None] = {}
    pending = b""
    while chunk := os.read(fd, 65536):
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            if line == b"q":
                return None
            if line[:1] == b"+":  # "+PGID" or "+PGID BY": the pidfd proves identity
                pgid = int(line[1:].split()[0])
                leaders[pgid] = open_pidfd(pgid)
            elif line[:1] == b"-":
                pidfd = leaders.pop(int(line[1:]), None)
                if pidfd is not None:
                    os.close(pidfd)
    return leaders


def open_pidfd(pid: int) -> int | None:
    """A pidfd on `pid`, or None if it has already exited (or pidfds are not available)."""
    try:
        return os.pidfd_open(pid)
    except (OSError, AttributeError):
        return None


def kill_group_if_same(pgid: int, pidfd: int | None) -> None:
    """SIGKILL the group `pgid` if its leader is still the process registered.

    A pidfd becomes readable once its process has exited: then the number may belong to
    another group by now, and only the mark scan may kill its former members.
    """
    if pidfd is None:
        return
    exited = bool(select.select([pidfd], [], [], 0)[0])
    if not exited:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass
    os.close(pidfd)


def kill_marked(assignment: str) -> None:
    """SIGKILL every process whose environment holds `assignment`, until none is left."""
    needle = b"\0" + assignment.encode() + b"\0"
    me = os.getpid()
    quiet = 0
    while quiet < QUIET_SCANS:
        found = 0
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) == me:
                continue
            try:
                with open(f"/proc/{name}/environ", "rb") as f:
                    marked = needle in b"\0" + f.read()
                if marked:
                    os.kill(int(name), signal.SIGKILL)
                    found += 1
            except OSError:
                pass
        quiet = 0 if found else quiet + 1
        time.sleep(SCAN_PAUSE)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
