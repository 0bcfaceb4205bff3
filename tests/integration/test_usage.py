"""What each agent costs (`supervisor.usage`): CPU % and RSS in AGENT and /metrics.

Real processes (`yes` burning a core under a `sleep` leader) and real in-process agents
in the test's trio loop, read over the API with httpx.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from supervisor.usage import MIN_INTERVAL
from tests.integration.test_api import open_api, wait_for

AGENTS = "tests.agents.observe_agents"
MANIFEST = f"""
[agents.busy]
command = ["sh", "-c", "yes > /dev/null & exec sleep 100000"]
[agents.idle]
command = ["sleep", "100000"]
[agents.spin]
entry = "{AGENTS}:spinner"
[agents.calm]
entry = "{AGENTS}:talker"
params = {{lines = 0}}
"""


@pytest.fixture(autouse=True)
def _no_token_from_outside(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SUPERVISOR_TOKEN", raising=False)


def vm_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


async def test_cpu_and_rss_of_process_trees_and_in_process_agents(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with open_api(tmp_path, MANIFEST) as api:

            async def agents() -> dict[str, Any]:
                answer = await api.http.get("/agents")
                assert answer.status_code == 200
                return {a["id"]: a for a in answer.json()["agents"]}

            busy_pid = api.sup.slots["busy"].pid
            assert busy_pid is not None
            await wait_for(lambda: children(busy_pid))  # the `yes` under the leader
            await agents()  # a first reading: the averages since each run started
            await trio.sleep(MIN_INTERVAL + 0.5)
            now = await agents()
            busy, idle, spin, calm = (now[k] for k in ("busy", "idle", "spin", "calm"))
            # the tree's CPU is the `yes`: far above the idle `sleep` (2 shared cores)
            assert busy["cpu"] > 5.0, busy
            assert idle["cpu"] == 0.0, idle
            # RSS is the whole tree's: the leader's and its child's
            yes_pid = children(busy_pid)[0]
            assert busy["rss"] >= 0.8 * (vm_rss(busy_pid) + vm_rss(yes_pid))
            assert idle["rss"] > 0
            # in-process: the time their tasks held the loop; no RSS of their own
            assert spin["cpu"] > 5.0, spin
            assert calm["cpu"] == 0.0, calm
            assert spin["rss"] is None
            assert calm["rss"] is None
            # one agent alone reads the same way
            one = (await api.http.get("/agents/busy")).json()
            assert one["cpu"] is not None
            assert one["rss"] > 0
            # a stopped agent costs nothing and shows nothing
            assert (await api.http.post("/agents/busy/stop")).status_code == 200
            gone = (await agents())["busy"]
            assert gone["cpu"] is None
            assert gone["rss"] is None


async def test_metrics_give_cpu_seconds_and_rss(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with open_api(tmp_path, MANIFEST) as api:
            busy_pid = api.sup.slots["busy"].pid
            assert busy_pid is not None
            await wait_for(lambda: children(busy_pid))
            await trio.sleep(0.5)
            text = (await api.http.get("/metrics")).text
            samples = {
                line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith(("supervisor_agent_cpu", "supervisor_agent_memory"))
            }
            assert samples['supervisor_agent_cpu_seconds_total{agent="busy"}'] > 0
            assert samples['supervisor_agent_cpu_seconds_total{agent="spin"}'] > 0
            assert samples['supervisor_agent_memory_rss_bytes{agent="busy"}'] > 0
            assert 'supervisor_agent_memory_rss_bytes{agent="spin"}' not in samples
