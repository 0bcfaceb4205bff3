"""A flood of output: memory stays bounded and the API answers (docs/operations.md).

Ten agents run `yes`, one prints without newlines; the supervisor's stdout is a pipe that
nobody reads, so its writer is stuck from the first 64 KiB. Its RSS, read from /proc, must
stay under FLOOD_RSS_BOUND for the whole run, and /healthz and the logs route answer.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

# The supervisor's own RSS with 11 agents printing flat out: the interpreter and its
# modules (~45 MiB here), plus per agent at most one 64 KiB chunk in flight, its ring of
# recent output (256 Ki characters) and the stdout queue's 1 Mi characters shared.
FLOOD_RSS_BOUND = 96 * 1024 * 1024
SECONDS = 20.0


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers={"Authorization": "Bearer flood-token"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.mark.slow
def test_ten_yes_agents_and_a_line_without_end_keep_memory_bounded(tmp_path: Path) -> None:
    agents = "".join(f'[agents.yes{i}]\ncommand = ["yes"]\n' for i in range(10))
    agents += '[agents.endless]\ncommand = ["sh", "-c", "yes | tr -d \'\\\\n\'"]\n'
    manifest = tmp_path / "agents.toml"
    manifest.write_text(agents)
    port = free_port()
    cmd = [sys.executable, "-m", "supervisor", "run", str(manifest), "--api", f"127.0.0.1:{port}"]
    env = {**os.environ, "SUPERVISOR_TOKEN": "flood-token"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 20
        while True:  # wait for the API
            try:
                if get(port, "/healthz")[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None, "the supervisor exited"
            assert time.monotonic() < deadline, "the API never answered"
            time.sleep(0.05)
        peak = 0
        answered = 0
        end = time.monotonic() + SECONDS
        while time.monotonic() < end:
            peak = max(peak, rss(proc.pid))
            status, _ = get(port, "/healthz")
            assert status == 200
            answered += 1
            time.sleep(0.2)
        status, body = get(port, "/agents/yes0/logs?lines=3")
        assert status == 200
        assert [x["msg"] for x in json.loads(body)["lines"]] == ["y", "y", "y"]
        status, body = get(port, "/agents/endless/logs?lines=1")
        assert len(json.loads(body)["lines"][0]["msg"]) == 65536
        status, body = get(port, "/metrics")
        dropped = [
            line for line in body.decode().splitlines()
            if line.startswith('supervisor_output_dropped_lines_total{agent="yes0"}')
        ]  # fmt: skip
        assert dropped, "drops are counted in /metrics"
        assert float(dropped[0].split()[-1]) > 0
        print(f"peak RSS {peak / 2**20:.1f} MiB over {SECONDS:g} s, {answered} answers")
        assert peak < FLOOD_RSS_BOUND, f"peak RSS {peak / 2**20:.0f} MiB"
        assert answered >= SECONDS / 2  # /healthz answered all along (5 s timeout each)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
