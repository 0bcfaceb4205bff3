"""Shared fixtures: specs built directly, and the autojump clock for trio time."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio.testing
from hypothesis import settings

from supervisor.manifest import AgentSpec

from .harness import alive

HERE = Path(__file__).parent

# Property tests check behaviour, not speed (speed is benchmarks/'): no per-example
# deadline, which a loaded 2-core machine would turn into random failures.
settings.register_profile("supervisor", deadline=None)
settings.load_profile("supervisor")


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


def make_spec(agent_id: str = "a", **keys: Any) -> AgentSpec:
    """An in-process AgentSpec with the defaults of docs/manifest.md, rooted in tests/."""
    keys.setdefault("kind", "process" if "command" in keys else "in-process")
    if keys["kind"] == "in-process":
        keys.setdefault("entry", "agents.idle:main")
    keys.setdefault("root", HERE)
    keys.setdefault("cwd", HERE)
    return AgentSpec(id=agent_id, **keys)


# Every process a test starts inherits this mark, however deep: after the suite, a
# process still carrying it was leaked.
SESSION_MARK = f"SUPERVISOR_TEST_SESSION={os.getpid()}-{time.time_ns()}"
os.environ["SUPERVISOR_TEST_SESSION"] = SESSION_MARK.split("=", 1)[1]

# The tokens the supervisors of this session make for themselves (api-PORT.token) go to a
# folder of its own, inherited by every process it starts: a token left by a supervisor
# of another run that was SIGKILLed (here or by another suite on this machine) is never
# read by this run's clients for a port that happens to be the same.
RUNTIME_DIR = tempfile.mkdtemp(prefix="supervisor-tests-")  # mode 0700
os.environ["SUPERVISOR_RUNTIME_DIR"] = RUNTIME_DIR


def _marked() -> list[int]:
    """Live processes, other than this one, that carry this session's mark."""
    found = []
    mark = SESSION_MARK.encode() + b"\0"
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if mark in (proc / "environ").read_bytes() and alive(int(proc.name)):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


@pytest.fixture(scope="session", autouse=True)
def no_leaked_processes() -> Iterator[None]:
    """After the whole suite, no process a test started may still be running."""
    yield
    deadline = time.monotonic() + 10
    while (leaked := _marked()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not leaked, f"processes left running after the tests: {sorted(leaked)}"
    shutil.rmtree(RUNTIME_DIR, ignore_errors=True)


@pytest.fixture(autouse=True)
def _no_leader_left_registered() -> Iterator[None]:
    """A test that ends with an agent leader still registered leaks it into the next
    ones (a reused pid would be taken for a leader and skipped by containment)."""
    from supervisor.runners.containment import LEADERS

    before = set(LEADERS)
    yield
    leaked = LEADERS - before
    LEADERS.difference_update(leaked)
    assert not leaked, f"agent leaders still registered after the test: {sorted(leaked)}"
