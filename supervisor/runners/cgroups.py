"""cgroup v2 files for containment: our parent cgroup, an agent's, ``cgroup.kill``.

Sync: cgroupfs files are in memory (a write to ``cgroup.procs`` can wait for an RCU grace
period, about 0.1 ms on an idle machine; see docs/operations.md, "Containment").
"""

from __future__ import annotations

import os
from pathlib import Path


def make_parent() -> Path:
    """``<our cgroup>/supervisor-NS-PID``, made; OSError if cgroup v2 is not ours to use.

    NS is our PID namespace's inode number: a PID means something only in its namespace,
    and supervisors of several namespaces (containers without a cgroup namespace, a
    supervisor under ``unshare --pid``) can share a cgroup, even with the same PID.
    """
    own = own_dir()
    namespace = os.stat("/proc/self/ns/pid").st_ino
    # (only where /proc shows our namespace's PIDs: not under `unshare --pid` without
    # a /proc of its own, where a PID of ours would be looked up among the host's)
    if os.readlink("/proc/self") == str(os.getpid()):
        for stale in own.glob(f"supervisor-{namespace}-*"):  # left by one SIGKILLed
            pid = stale.name.rpartition("-")[2]
            if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                remove(stale)
    parent = own / f"supervisor-{namespace}-{os.getpid()}"
    parent.mkdir(exist_ok=True)
    procs = parent / "cgroup.procs"
    if not (parent / "cgroup.kill").exists():
        remove(parent)
        raise OSError(0, "cgroup.kill is missing (Linux 5.14 or later needed)")
    if not os.access(procs, os.W_OK):
        remove(parent)
        raise OSError(0, f"{procs} is not writable")
    return parent


def own_dir() -> Path:
    """The folder of this process's cgroup v2, from /proc/self/{cgroup,mountinfo}."""
    own = None
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            own = line[3:]
    if own is None:
        raise OSError(0, "not in a cgroup v2 hierarchy")
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if right.split()[:1] == ["cgroup2"]:
            fields = left.split()
            root, mountpoint = fields[3], fields[4].replace("\\040", " ")
            relative = os.path.relpath(own, root) if own.startswith(root) else None
            if relative is not None:
                return Path(os.path.normpath(os.path.join(mountpoint, relative)))
    raise OSError(0, "cgroup v2 is not mounted")


def remove(path: Path | str) -> None:
    """rmdir a cgroup and its (empty) children; what is still populated stays."""
    try:
        with os.scandir(path) as entries:  # kernfs gives the types: no stat per file
            subgroups = [entry.path for entry in entries if entry.is_dir()]
        for child in subgroups:
            remove(child)
        os.rmdir(path)
    except OSError:
        pass


def write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def kill(cgroup: Path | str) -> None:
    try:
        write(f"{cgroup}/cgroup.kill", "1")
    except OSError:
        pass


def relative(cgroup: Path | str) -> str:
    """`cgroup`'s path as /proc/PID/cgroup names it (relative to our own's root)."""
    own = Path("/proc/self/cgroup").read_text().split("0::", 1)[1].split("\n", 1)[0]
    mine = own_dir()
    return os.path.normpath(os.path.join(own, os.path.relpath(cgroup, mine))).lstrip("/")
