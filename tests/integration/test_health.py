"""Health in a slot: probes against real servers, watchdogs, readiness by probe.

Slots run real agents through the real runners (`make_runner()`): process agents are
real servers on 127.0.0.1 (tests/agents/health_agents.py), probes are real HTTP
requests, TCP connections and child processes. Timing logic that needs no I/O (the
watchdog of an in-process agent) runs under the MockClock.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from supervisor.manifest import Backoff, Probe, ReadyProbe
from supervisor.runners.containment import LEADERS
from supervisor.runners.dispatch import make_runner
from supervisor.signals import reap_orphans
from supervisor.slot import Slot

from ..conftest import make_spec
from ..harness import alive

AGENTS = Path(__file__).parents[1] / "agents"
SCRIPT = str(AGENTS / "health_agents.py")
SYSTEMD_NOTIFY = "/usr/bin/systemd-notify"
QUICK = Backoff(initial=0.05, max=0.05, jitter=0.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_for(slot: Slot, condition: Any, limit: float = 30) -> None:
    with trio.fail_after(limit):
        while not condition():
            await slot.changed.wait()


async def run_until(slot: Slot, condition: Any, limit: float = 30) -> None:
    """Launch `slot`, wait for `condition()`, then stop it."""
    async with trio.open_nursery() as nursery:
        slot.launch(nursery)
        try:
            await wait_for(slot, condition, limit)
        finally:
            slot.stop()


def process(agent: str, *args: object, **keys: Any) -> Slot:
    keys.setdefault("backoff", QUICK)
    command = (sys.executable, SCRIPT, agent, *map(str, args))
    return Slot(make_spec("web", kind="process", command=command, **keys), make_runner())


def inprocess(entry: str, **keys: Any) -> Slot:
    keys.setdefault("backoff", QUICK)
    return Slot(make_spec("bot", entry=f"agents.health_agents:{entry}", **keys), make_runner())


def errors(slot: Slot) -> list[str | None]:
    return [e.error for e in slot.exits]


# -- liveness: real servers ---------------------------------------------------------------


async def test_http_server_that_starts_answering_503_is_restarted(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/healthz"
    slot = process(
        "http",
        port,
        2,
        tmp_path / "count",
        ready=ReadyProbe(http=url, period=0.05),
        liveness=Probe(http=url, period=0.1, failures=3),
    )
    await run_until(slot, lambda: slot.restarts >= 1)
    expected = f"liveness: GET {url}: 503 three times"
    assert errors(slot)[0] == expected
    assert slot.health is not None
    assert slot.health.runs_ended == expected
    assert slot.health.checks[("liveness", "ended")] == 1
    assert slot.health.checks[("liveness", "failed")] >= 3
    # ready by its probe (one of the two good answers), then two good liveness checks
    assert slot.health.checks[("ready", "ok")] >= 1


async def test_tcp_server_that_stops_accepting_is_restarted() -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    slot = process(
        "tcp",
        port,
        0.5,
        ready=ReadyProbe(tcp=address, period=0.05),
        liveness=Probe(tcp=address, period=0.1, failures=2),
    )
    pids: list[int | None] = []
    await run_until(slot, lambda: pids.append(slot.pid) or slot.restarts >= 1)
    assert errors(slot)[0] == f"liveness: connect {address}: connection refused twice"
    first = next(pid for pid in pids if pid is not None)
    assert not alive(first)  # the hung server was stopped, not left running


async def test_exec_probe_that_hangs_is_killed_at_its_timeout(tmp_path: Path) -> None:
    seconds = f"{600 + os.getpid() % 1000}.25"  # names this test's probes in /proc
    slot = process(
        "tcp",
        free_port(),
        3600,
        liveness=Probe(exec=("sleep", seconds), period=0.1, timeout=0.2, failures=2),
    )
    await run_until(slot, lambda: slot.restarts >= 1)
    assert errors(slot)[0] == f"liveness: exec sleep {seconds}: no answer within 0.2s twice"
    probes = [
        pid
        for pid in filter(str.isdigit, os.listdir("/proc"))
        if _cmdline(pid) == f"sleep\0{seconds}\0".encode() and alive(int(pid))
    ]
    assert probes == []  # each was killed at its timeout


def _cmdline(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


async def test_exec_probe_gets_the_agents_env_and_cwd(tmp_path: Path) -> None:
    (tmp_path / "ok").write_text("")
    slot = process(
        "tcp",
        free_port(),
        3600,
        cwd=tmp_path,
        env={"WANT": "ok"},
        ready=ReadyProbe(exec=("sh", "-c", 'test -e "$WANT"'), period=0.05),
    )
    await run_until(slot, lambda: slot.state == "running")
    assert slot.health is not None
    assert slot.health.result == "ok"


async def test_failing_ready_probe_is_a_start_timeout() -> None:
    slot = process(
        "tcp",
        free_port(),
        3600,
        ready=ReadyProbe(tcp=f"127.0.0.1:{free_port()}", period=0.05),
        start_timeout=0.5,
        restart="never",
    )
    await run_until(slot, lambda: slot.state == "failed")
    assert errors(slot) == ["start timeout: not ready within 0.5s"]
    assert slot.health is not None
    assert slot.health.result.endswith("connection refused")
    assert ("ready", "ok") not in slot.health.checks


async def test_log_ready_probe_waits_for_a_matching_line() -> None:
    slot = process("tcp", free_port(), 3600, ready=ReadyProbe(log=r"^listen"))
    await run_until(slot, lambda: slot.state == "running")
    inproc = inprocess("logs_ready", ready=ReadyProbe(log=r"listening on port \d+"))
    await run_until(inproc, lambda: inproc.state == "running")
    assert inproc.health is not None
    assert inproc.health.checks == {("ready", "ok"): 1}


# -- watchdogs -------------------------------------------------------------------------------


async def test_inprocess_agent_that_stops_heartbeating_fails_its_run(
    autojump_clock: trio.testing.MockClock,
) -> None:
    slot = inprocess("beats_then_stops", params={"beats": 5}, watchdog=2.0)
    async with trio.open_nursery() as nursery:
        slot.launch(nursery)
        await wait_for(slot, lambda: slot.restarts >= 1, limit=100)
        # beats at 0..4 s, the last one at 4: nothing by 6 s
        assert slot.exits[0].at == pytest.approx(6.0)
        assert errors(slot) == ["watchdog: no heartbeat within 2s"]
        slot.stop()
    assert slot.health is not None
    assert slot.health.checks[("watchdog", "ended")] == 1


async def test_heartbeating_agent_keeps_running(autojump_clock: trio.testing.MockClock) -> None:
    slot = inprocess("beats_forever", params={"every": 0.9}, watchdog=1.0)
    async with trio.open_nursery() as nursery:
        slot.launch(nursery)
        await trio.sleep(1000)
        assert (slot.state, slot.restarts) == ("running", 0)
        slot.stop()


async def test_liveness_timing_under_the_mock_clock(autojump_clock: trio.testing.MockClock) -> None:
    # A connection to a closed loopback port is refused at once, with nothing to wait
    # for: the probe loop's own timing (initial_delay, period, failures) is all there is.
    probe = Probe(tcp="127.0.0.1:1", period=10, failures=3, initial_delay=5)
    slot = inprocess("beats_forever", liveness=probe)
    async with trio.open_nursery() as nursery:
        slot.launch(nursery)
        await wait_for(slot, lambda: slot.exits, limit=1000)
        slot.stop()
    assert slot.exits[0].at == pytest.approx(25.0)  # checks at 5, 15, 25
    assert errors(slot) == ["liveness: connect 127.0.0.1:1: connection refused three times"]


needs_systemd_notify = pytest.mark.skipif(
    not os.access(SYSTEMD_NOTIFY, os.X_OK), reason="needs systemd-notify (Debian's systemd)"
)


@needs_systemd_notify
async def test_process_watchdog_with_real_systemd_notify(tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    script = (
        f'echo "$WATCHDOG_PID $$ $WATCHDOG_USEC" > {env_file}; '
        f"for i in 1 2 3 4 5 6; do {SYSTEMD_NOTIFY} WATCHDOG=1; sleep 0.2; done; "
        "exec sleep 3600"
    )
    slot = Slot(
        make_spec("svc", kind="process", command=("sh", "-c", script), watchdog=1.5, backoff=QUICK),
        make_runner(),
    )
    started = trio.current_time()
    await run_until(slot, lambda: slot.restarts >= 1)
    assert errors(slot)[0] == "watchdog: no heartbeat within 1.5s"
    # six heartbeats over ~1.2 s kept it going past its first 1.5 s
    assert slot.exits[0].at - started > 1.5
    watchdog_pid, pid, usec = env_file.read_text().split()
    assert watchdog_pid == pid  # the agent's own pid, as systemd sets it
    assert usec == "1500000"
    assert slot.health is not None
    assert slot.health.checks[("watchdog", "ended")] == 1


@needs_systemd_notify
async def test_watchdog_trigger_fails_the_run_at_once() -> None:
    script = f"sleep 0.2; {SYSTEMD_NOTIFY} WATCHDOG=trigger; exec sleep 3600"
    slot = Slot(
        make_spec("svc", kind="process", command=("sh", "-c", script), watchdog=60, backoff=QUICK),
        make_runner(),
    )
    await run_until(slot, lambda: slot.restarts >= 1, limit=20)
    assert errors(slot)[0] == "watchdog: the agent sent WATCHDOG=trigger"


async def test_agents_without_health_keep_nothing_for_it() -> None:
    plain = inprocess("beats_forever")
    assert plain.health is None
    assert "health" not in vars(plain)
    assert "blocked" not in vars(plain)  # class defaults until the loop-lag instrument writes
    plain.heartbeat()  # ctx.heartbeat() without a watchdog: nothing happens
    await run_until(plain, lambda: plain.state == "running")
    assert vars(plain).get("_failure") is None


async def test_an_exec_probes_exit_is_its_own_under_a_reaper() -> None:
    # A subreaper (or PID 1) reaps orphans on SIGCHLD, sparing `LEADERS`; a check's
    # process not registered there could be reaped first, and Popen then reports exit 0:
    # a failing check would pass.
    slot = process(
        "tcp",
        free_port(),
        3600,
        liveness=Probe(exec=("sh", "-c", "exit 3"), period=0.02, failures=5),
    )

    async def reaper() -> None:
        while True:
            reap_orphans(LEADERS)
            await trio.sleep(0.001)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reaper)
        await run_until(slot, lambda: slot.restarts >= 1)
        nursery.cancel_scope.cancel()
    assert errors(slot)[0] == "liveness: exec sh -c exit 3: exit 3 5 times"
    assert slot.health is not None
    assert slot.health.checks.get(("liveness", "ok"), 0) == 0
