"""`supervisor logs` and `supervisor events` against a real `supervisor run`."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.e2e.test_cli_client import (  # noqa: F401 (fixtures)
    Client,
    _no_outside_settings,
    client,
    run_cli,
    sock,
    start_supervisor,
)

MANIFEST = """
[agents.talk]
command = ["sh", "-c", "echo one; echo two; printf 'esc\\\\033[2J\\\\n'; echo err >&2; exec sleep 100000"]
[agents.idle]
command = ["sleep", "100000"]
"""


_readers: dict[int, queue.Queue[str]] = {}


def read_line(proc: subprocess.Popen[str], timeout: float = 20.0) -> str:
    """The next line `proc` prints, waiting at most `timeout` (a thread reads its pipe)."""
    if proc.pid not in _readers:
        lines: queue.Queue[str] = queue.Queue()
        stdout = proc.stdout
        assert stdout is not None
        threading.Thread(target=lambda: [lines.put(x) for x in stdout], daemon=True).start()
        _readers[proc.pid] = lines
    try:
        return _readers[proc.pid].get(timeout=timeout)
    except queue.Empty:
        raise AssertionError("no line within the deadline") from None


def test_logs_prints_recent_lines_escaped_and_follows(
    tmp_path: Path,
    sock: Path,  # noqa: F811
    client: Client,  # noqa: F811
) -> None:
    with start_supervisor(tmp_path, sock, MANIFEST):
        api = f"unix:{sock}"
        deadline = time.monotonic() + 20
        while True:
            ran = client("logs", "talk", "--api", api)
            if ran.stdout.count("\n") >= 4 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert ran.returncode == 0, ran
        got = [line.split(" ", 1)[1] for line in ran.stdout.splitlines()]
        assert [line for line in got if not line.startswith("[")][:2] == ["one", "two"]
        assert "esc\\x1b[2J" in got
        assert "[stderr] err" in got
        assert client("logs", "talk", "-n", "1", "--api", api).stdout.count("\n") == 1
        missing = client("logs", "nope", "--api", api)
        assert missing.returncode == 1
        assert "no agent 'nope'" in missing.stderr
        assert run_cli("logs", "talk", "-n", "x", "--api", api).returncode == 2
        follow = subprocess.Popen(
            [sys.executable, "-m", "supervisor", "logs", "talk", "-n", "1", "-f", "--api", api],
            stdout=subprocess.PIPE,
            text=True,
            env=os.environ,
        )
        try:
            assert read_line(follow).strip().endswith(("err", "esc\\x1b[2J", "two"))
            assert client("restart", "talk", "--api", api).returncode == 0
            seen = [read_line(follow) for _ in range(4)]
            assert any(line.strip().endswith(" one") for line in seen), seen
        finally:
            follow.terminate()
            follow.wait()
            assert follow.stdout is not None
            follow.stdout.close()


def test_events_prints_the_snapshot_then_changes(
    tmp_path: Path,
    sock: Path,  # noqa: F811
    client: Client,  # noqa: F811
) -> None:
    with start_supervisor(tmp_path, sock, MANIFEST):
        api = f"unix:{sock}"
        events = subprocess.Popen(
            [sys.executable, "-m", "supervisor", "events", "--json", "--api", api],
            stdout=subprocess.PIPE,
            text=True,
            env=os.environ,
        )
        try:
            first = json.loads(read_line(events))
            assert first["event"] == "snapshot"
            assert {a["id"] for a in first["data"]["agents"]} == {"talk", "idle"}
            assert client("stop", "idle", "--api", api).returncode == 0
            states = []
            while "stopped" not in states:
                event = json.loads(read_line(events))
                if event["event"] == "agent" and event["data"]["id"] == "idle":
                    states.append(event["data"]["state"])
            assert states == ["stopping", "stopped"]
        finally:
            events.terminate()
            events.wait()
            assert events.stdout is not None
            events.stdout.close()
        text = subprocess.Popen(
            [sys.executable, "-m", "supervisor", "events", "--api", api],
            stdout=subprocess.PIPE,
            text=True,
            env=os.environ,
        )
        try:
            assert "snapshot: 2 agents (1 running, 1 stopped)" in read_line(text)
        finally:
            text.terminate()
            text.wait()
            assert text.stdout is not None
            text.stdout.close()
