"""End to end: hung agents are restarted, and why is visible everywhere a user looks.

A real `supervisor run` with its API on a unix socket runs a process agent that stays
alive but stops answering its liveness probe, an in-process agent that stops
heartbeating, and one that blocks the event loop with `time.sleep`. The reasons must show
in `supervisor status`, `GET /agents/{id}`, the log and `/metrics`.
"""

from __future__ import annotations

import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..harness import wait_until
from .test_cli_client import request, run_cli, start_supervisor

pytestmark = pytest.mark.slow

AGENTS = Path(__file__).parents[1] / "agents"


@pytest.fixture
def sock() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="sv-health-"))
    yield folder / "api.sock"
    shutil.rmtree(folder)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def agent(sock: Path, agent_id: str) -> dict[str, Any]:
    answer: dict[str, Any] = request(sock, "GET", f"/agents/{agent_id}").json()
    return answer


def test_hung_agents_are_restarted_and_say_why(tmp_path: Path, sock: Path) -> None:
    shutil.copy(AGENTS / "health_agents.py", tmp_path / "health_agents.py")
    port = free_port()
    url = f"http://127.0.0.1:{port}/healthz"
    count = tmp_path / "count"
    script = tmp_path / "health_agents.py"
    manifest = f"""
[defaults]
backoff = {{ initial = 0.1, jitter = 0.0 }}

[agents.web]
command = ["{sys.executable}", "{script}", "http", "{port}", "2", "{count}", "hang"]
# ready once it listens (a TCP probe sends no request, so it counts none): liveness starts
# then, not while a loaded machine is still starting Python (refused connections)
ready = {{ tcp = "127.0.0.1:{port}" }}
liveness = {{ http = "{url}", period = 0.5, timeout = 0.3, failures = 2 }}

[agents.bot]
entry = "health_agents:beats_then_stops"
params = {{ beats = 2 }}
watchdog = 1

[agents.blocker]
entry = "health_agents:blocks_the_loop"
params = {{ after = 0.5, seconds = 1.0 }}
"""
    with start_supervisor(tmp_path, sock, manifest) as sup:
        # web: two good answers, then it hangs; restarted within period x failures
        # (+ the timeout of the last check) of the first check that got no answer.
        hung_at = wait_until(
            lambda: count.exists() and count.read_text() == "3" and time.time(),
            timeout=30,
            what="web to hang",
        )
        wait_until(lambda: agent(sock, "web")["restarts"] >= 1, timeout=30, what="web restarted")
        web = agent(sock, "web")
        reason = f"liveness: GET {url}: no answer within 0.3s twice"
        assert web["last_exit"]["error"] == reason
        assert web["health"]["ended_run"] == reason
        assert web["last_exit"]["at"] - hung_at < 0.5 * 2 + 0.3 + 5.0  # generous: load

        # bot: heartbeats at 0 and 1 s, then none: restarted about 2 s after its start
        wait_until(lambda: agent(sock, "bot")["restarts"] >= 1, timeout=30, what="bot restarted")
        bot = agent(sock, "bot")
        assert bot["last_exit"]["error"] == "watchdog: no heartbeat within 1s"
        assert bot["health"]["watchdog"] == 1

        # blocker: named in the log, with the time, and counted
        wait_until(lambda: agent(sock, "blocker")["blocked"] >= 1.0, timeout=30, what="blocked")
        sup.wait_log("blocker: held the event loop for 1.")  # 1.0s, or more under load
        assert agent(sock, "web")["blocked"] is None  # a process does not block our loop

        sup.wait_log(f"web: {reason}; stopping it")
        sup.wait_log("bot: backoff (watchdog: no heartbeat within 1s; restart in 0.10s)")

        metrics = request(sock, "GET", "/metrics").text
        assert 'supervisor_agent_health_failures_total{agent="web",by="liveness"}' in metrics
        assert 'supervisor_agent_health_failures_total{agent="bot",by="watchdog"}' in metrics
        assert (
            'supervisor_agent_probe_checks_total{agent="web",probe="liveness",result="failed"}'
            in metrics
        )
        blocked = [
            line
            for line in metrics.splitlines()
            if line.startswith('supervisor_agent_blocked_seconds_total{agent="blocker"}')
        ]
        assert blocked
        assert float(blocked[0].split()[-1]) >= 1.0

        # web answers again once restarted: running, with why it was restarted
        def restarted_shown() -> str:
            out = run_cli("status", "--api", f"unix:{sock}").stdout
            return out if "restarted: liveness: GET" in out else ""

        table = wait_until(restarted_shown, timeout=30, what="web running again in status")
        assert "watchdog: no heartbeat within 1s" in table  # bot: running again, or backoff
        assert "blocked the loop 1." in table
