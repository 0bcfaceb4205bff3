"""The supervisor's parent cgroup (supervisor.runners.cgroups.make_parent), with real
cgroup v2 folders and real PID namespaces (``unshare --pid``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from supervisor.runners import cgroups

try:
    OWN = cgroups.own_dir()
    USABLE = os.access(OWN, os.W_OK)
except OSError:
    USABLE = False
pytestmark = [
    pytest.mark.skipif(not USABLE, reason="needs a writable cgroup v2"),
    pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux)"),
]

MAKE_PARENT = "from supervisor.runners import cgroups; print(cgroups.make_parent())"


def make_parent_in_new_namespace() -> Path:
    """make_parent() run by PID 1 of a new PID namespace (with its own /proc), in our
    cgroup; its folder is removed again."""
    done = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", MAKE_PARENT],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    made = Path(done.stdout.strip())
    cgroups.remove(made)
    return made


def test_a_supervisor_of_another_pid_namespace_keeps_ours() -> None:
    ours = cgroups.make_parent()
    try:
        theirs = make_parent_in_new_namespace()
        assert ours.is_dir()  # its /proc does not show our PID: we are not stale to it
        assert theirs.parent == ours.parent
        assert theirs.name.endswith("-1")  # PID 1 of its namespace
        assert theirs != ours
    finally:
        cgroups.remove(ours)


def test_what_a_dead_supervisor_of_our_namespace_left_is_removed() -> None:
    namespace = os.stat("/proc/self/ns/pid").st_ino
    probe = subprocess.Popen(["true"])
    probe.wait()  # its PID is free again (and not reused within this test)
    stale = OWN / f"supervisor-{namespace}-{probe.pid}"
    other_namespace = OWN / f"supervisor-{namespace + 1}-{probe.pid}"
    for folder in (stale, other_namespace):
        folder.mkdir()
    try:
        ours = cgroups.make_parent()
        cgroups.remove(ours)
        assert not stale.exists()  # its PID is dead in our namespace
        assert other_namespace.is_dir()  # a PID of another namespace says nothing to us
    finally:
        for folder in (stale, other_namespace):
            cgroups.remove(folder)
