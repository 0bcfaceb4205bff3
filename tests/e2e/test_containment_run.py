"""Containment end to end: a real `supervisor run`, its agents leaving their groups.

Each way an agent stops (`supervisor stop`, `supervisor restart`, a reload that changes
it, a graceful SIGTERM), in both modes: none of the processes that left the agent's
group (tests/agents/escape.py) may remain in /proc.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from supervisor.runners.containment import Containment

from ..harness import SupervisorProcess, alive, lines, wait_until
from .test_run import write

ESCAPE = str(Path(__file__).parents[1] / "agents" / "escape.py")
ESCAPED = {"daemon": 1, "setsid": 1, "deep": 3}  # processes each mode leaves its group with


def cgroups_writable() -> bool:
    made = Containment.setup()
    made.close()
    return made.mode == "cgroup"


def escaped(pidfile: Path, count: int) -> list[int]:
    return wait_until(
        lambda: len(got := [int(p) for p in lines(pidfile)]) >= count and got,
        what=f"{count} escaped processes in {pidfile.name}",
    )


def left_running(pids: list[int]) -> list[int]:
    return [pid for pid in pids if alive(pid)]


def agent(tmp_path: Path, mode: str, version: str = "1") -> dict[str, Any]:
    pidfile = tmp_path / f"pids.{version}"
    return {"command": [sys.executable, ESCAPE, mode, str(pidfile)], "env": {"V": version}}


def cli(sock: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "supervisor", *args, "--api", f"unix:{sock}"],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.slow
@pytest.mark.parametrize("containment_mode", ["ancestry", "cgroup"])
@pytest.mark.parametrize("how", ["stop", "restart", "reload", "sigterm"])
def test_no_escaped_process_outlives_its_agent(
    tmp_path: Path, how: str, containment_mode: str
) -> None:
    if containment_mode == "cgroup" and not cgroups_writable():
        pytest.skip("needs a writable cgroup v2 (root, or Delegate=yes)")
    m = tmp_path / "agents.toml"
    sock = tmp_path / "api.sock"
    agents = {mode: agent(tmp_path / mode, mode) for mode in ESCAPED}
    for mode in ESCAPED:
        (tmp_path / mode).mkdir()
    write(m, agents)
    env = {"SUPERVISOR_CONTAINMENT": containment_mode}
    with SupervisorProcess(m, "--api", f"unix:{sock}", env=env) as sup:
        sup.wait_log(f"containment: {'a cgroup' if containment_mode == 'cgroup' else 'by process'}")
        pids = [p for mode, n in ESCAPED.items() for p in escaped(tmp_path / mode / "pids.1", n)]
        if how in ("stop", "restart"):
            for mode in ESCAPED:
                assert cli(sock, how, mode).returncode == 0, sup.output()
        elif how == "reload":
            write(m, {mode: agent(tmp_path / mode, mode, "2") for mode in ESCAPED})
            sup.signal(signal.SIGHUP)
            sup.wait_log("reloaded: 0 started, 0 stopped, 3 restarted", timeout=30)
        else:
            sup.signal(signal.SIGTERM)
            assert sup.wait_exit() == 0
        assert left_running(pids) == [], sup.output()
        if how in ("restart", "reload"):  # the new runs are up, and theirs die at the end
            version = "2" if how == "reload" else "1"
            for mode, n in ESCAPED.items():
                want = n * (1 if how == "reload" else 2)
                escaped(tmp_path / mode / f"pids.{version}", want)
            later = [int(p) for mode in ESCAPED for p in lines(tmp_path / mode / f"pids.{version}")]
            sup.signal(signal.SIGTERM)
            assert sup.wait_exit() == 0
            assert left_running(later) == []
        assert "Traceback" not in sup.output()


@pytest.mark.slow
def test_reaping_orphans_keeps_an_agents_exit_code(tmp_path: Path) -> None:
    """As a subreaper (not PID 1): orphans are reaped, the agent's exit code 3 stays 3."""
    m = tmp_path / "agents.toml"
    orphans = "while true; do (sleep 0.01 &); sleep 0.02; done"
    write(
        m,
        {
            "orphaner": {"command": ["sh", "-c", orphans]},
            "three": {
                "command": ["sh", "-c", "sleep 0.3; exit 3"],
                "max_restarts": 3,
                "backoff": {"initial": 0.05},
            },
        },
    )
    with SupervisorProcess(m) as sup:
        sup.wait_log("three: failed (exited with code 3; gave up after 3 restarts", timeout=30)
        assert sup.output().count("exited with code 3") >= 4
        assert "exited with code 0" not in sup.output()
        assert "exit status lost" not in sup.output()
        sup.signal(signal.SIGTERM)
        assert sup.wait_exit() == 0
