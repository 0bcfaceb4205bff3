"""What an agent costs, under `supervisor run`: a daemon that left its agent's tree.

The agent's shell starts `yes` in a new session and exits the subshell in between, so
`yes` is re-parented to the supervisor (a child subreaper): neither in the leader's tree
nor in its process group. Containment still knows it (the run's mark in its
environment), and so CPU % and RSS count it; `supervisor status` shows them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.test_output_flood import free_port, get, rss

DAEMON = "(setsid sh -c 'exec yes > /dev/null' &); exec sleep 100000"


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


@pytest.mark.slow
def test_a_daemon_that_left_the_tree_is_counted(tmp_path: Path) -> None:
    manifest = tmp_path / "agents.toml"
    manifest.write_text(f'[agents.daemon]\ncommand = ["sh", "-c", {json.dumps(DAEMON)}]\n')
    port = free_port()
    api = f"127.0.0.1:{port}"
    env = {**os.environ, "SUPERVISOR_TOKEN": "flood-token"}
    cmd = [sys.executable, "-m", "supervisor", "run", str(manifest), "--api", api]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 30
        daemon: list[int] = []
        while not daemon:  # `yes`, a child of the supervisor itself
            assert proc.poll() is None, "the supervisor exited"
            assert time.monotonic() < deadline, "no `yes` re-parented to the supervisor"
            daemon = [p for p in children(proc.pid) if comm(p) == "yes"]
            time.sleep(0.05)
        get(port, "/agents/daemon")  # a first reading
        time.sleep(1.0)
        status, body = get(port, "/agents/daemon")
        assert status == 200
        agent = json.loads(body)
        assert agent["cpu"] > 5.0, agent  # `yes` burns a core; the `sleep` leader nothing
        assert agent["rss"] >= 0.8 * (rss(agent["pid"]) + rss(daemon[0]))
        ran = subprocess.run(
            [sys.executable, "-m", "supervisor", "status", "--api", api],
            capture_output=True, text=True, env=env, timeout=60,
        )  # fmt: skip
        header, row = ran.stdout.splitlines()[:2]
        assert header.split()[6:8] == ["CPU", "MEM"]
        assert row.split()[6].endswith("%")
        assert row.split()[7][-1] in "KMG"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
