"""The status table shows what health checks said about a running agent, and how its
last run ended."""

from __future__ import annotations

from supervisor.cli.table import format_table


def agent(**keys: object) -> dict[str, object]:
    base: dict[str, object] = {
        "id": "web", "kind": "process", "state": "running", "pid": 42, "restarts": 1,
        "since": 100.0, "last_exit": None, "spec": {}, "status": "", "reason": "",
        "blocked": None, "health": None,
    }  # fmt: skip
    return {**base, **keys}


def test_a_restart_by_liveness_and_a_failing_check_are_in_the_note() -> None:
    health = {
        "probe": "liveness",
        "result": "GET http://127.0.0.1:8080/healthz: 503",
        "ended_run": "liveness: GET http://127.0.0.1:8080/healthz: 503 three times",
    }
    table = format_table([agent(health=health, status="serving")], now=160.0)
    note = table.splitlines()[1].split("  ")[-1]
    assert note == (
        "serving; liveness: GET http://127.0.0.1:8080/healthz: 503;"
        " restarted: liveness: GET http://127.0.0.1:8080/healthz: 503 three times"
    )


def test_a_healthy_agent_and_a_blocking_one() -> None:
    ok = {"probe": "liveness", "result": "ok", "ended_run": None}
    rows = format_table(
        [agent(health=ok), agent(id="bot", kind="in-process", pid=None, blocked=1.25)], now=160.0
    ).splitlines()
    assert rows[1].endswith("-")  # nothing to say: the LAST EXIT column ends the row
    assert rows[2].endswith("blocked the loop 1.2s")


def test_the_last_exit_says_whether_a_stop_ended_the_run_and_needed_sigkill() -> None:
    ends = [
        {"code": 7, "at": 100.0},
        {"code": 7, "stopped": True, "at": 100.0},
        {"signal": "SIGTERM", "stopped": True, "at": 100.0},
        {"signal": "SIGKILL", "stopped": True, "killed": True, "at": 100.0},
        {"code": 0, "stopped": True, "killed": True, "at": 100.0},
    ]
    rows = format_table([agent(state="stopped", pid=None, last_exit=e) for e in ends], now=160.0)
    assert [row.split("  ")[-1] for row in rows.splitlines()[1:]] == [
        "code 7, 1m00s ago",
        "stopped: code 7, 1m00s ago",
        "stopped: SIGTERM, 1m00s ago",
        "stopped: SIGKILL after stop_timeout, 1m00s ago",
        "stopped: code 0 (SIGKILL after stop_timeout), 1m00s ago",  # its daemon needed it
    ]
