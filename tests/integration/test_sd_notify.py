"""The sd_notify messages of docs/agents.md, each sent by Debian's real `systemd-notify`
from a real agent (a shell script: systemd-notify is its child, not the agent's leader,
and its message counts because the sender is one of the agent's processes)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest
import trio

from supervisor.runners.dispatch import make_runner
from supervisor.slot import Slot

from ..conftest import make_spec

SYSTEMD_NOTIFY = "/usr/bin/systemd-notify"
pytestmark = pytest.mark.skipif(
    not os.access(SYSTEMD_NOTIFY, os.X_OK), reason="needs systemd-notify (Debian's systemd)"
)


def agent(tmp_path: Path, script: str, **keys: Any) -> Slot:
    keys.setdefault("ready", "notify")
    keys.setdefault("restart", "never")
    spec = make_spec("n", command=("sh", "-c", script), cwd=tmp_path, **keys)
    return Slot(spec, make_runner())


async def until(slot: Slot, condition: Any, limit: float = 30) -> None:
    with trio.fail_after(limit):
        while not condition():
            await slot.changed.wait()


async def test_stopping_makes_it_stopping_and_not_ready(tmp_path: Path) -> None:
    script = (
        f"{SYSTEMD_NOTIFY} --ready; while [ ! -e stop ]; do sleep 0.02; done; "
        f"{SYSTEMD_NOTIFY} STOPPING=1; while [ ! -e end ]; do sleep 0.02; done"
    )
    slot = agent(tmp_path, script)
    async with trio.open_nursery() as nursery:
        slot.launch(nursery)
        await until(slot, lambda: slot.state == "running")
        (tmp_path / "stop").touch()
        await until(slot, lambda: slot.state != "running")
        seen = slot.state, slot.reason, slot.up
        (tmp_path / "end").touch()
        await until(slot, lambda: not slot.active)
    assert seen == ("stopping", "stopping by itself (STOPPING=1)", False)
    assert slot.state == "exited"  # then its exit is an exit like any other


async def test_reloading_is_not_ready_until_the_next_ready(tmp_path: Path) -> None:
    script = (
        f"{SYSTEMD_NOTIFY} --ready; while [ ! -e reload ]; do sleep 0.02; done; "
        f"{SYSTEMD_NOTIFY} RELOADING=1; while [ ! -e done ]; do sleep 0.02; done; "
        f"{SYSTEMD_NOTIFY} --ready; exec sleep 3600"
    )
    slot = agent(tmp_path, script)
    async with trio.open_nursery() as nursery:
        slot.launch(nursery)
        await until(slot, lambda: slot.state == "running")
        (tmp_path / "reload").touch()
        await until(slot, lambda: slot.state != "running")
        reloading = slot.state, slot.reason, slot.up
        (tmp_path / "done").touch()
        await until(slot, lambda: slot.state == "running")
        slot.stop()
    assert reloading == ("starting", "reloading (RELOADING=1)", False)
    assert (slot.restarts, slot.readied) == (0, 1)  # the same run, ready again


async def test_extend_timeout_usec_extends_the_start(tmp_path: Path) -> None:
    script = (
        f"{SYSTEMD_NOTIFY} EXTEND_TIMEOUT_USEC=20000000; sleep 1.5; "
        f"{SYSTEMD_NOTIFY} --ready; exec sleep 3600"
    )
    slot = agent(tmp_path, script, start_timeout=0.5)
    async with trio.open_nursery() as nursery:
        slot.launch(nursery)
        await until(slot, lambda: slot.state != "starting")
        state, exits = slot.state, list(slot.exits)
        slot.stop()
    assert (state, exits) == ("running", [])


async def test_extend_timeout_usec_extends_a_stop(tmp_path: Path) -> None:
    # Its TERM trap asks for more time, then takes longer than stop_timeout to finish.
    script = (
        f"trap '{SYSTEMD_NOTIFY} EXTEND_TIMEOUT_USEC=30000000; sleep 3.5; exit 0' TERM; "
        f"{SYSTEMD_NOTIFY} --ready; while :; do sleep 0.05; done"
    )
    # stop_timeout leaves a loaded machine time to run systemd-notify; the trap then
    # takes longer than that.
    slot = agent(tmp_path, script, stop_timeout=2)
    async with trio.open_nursery() as nursery:
        slot.launch(nursery)
        await until(slot, lambda: slot.state == "running")
        slot.stop()
    last = slot.exits[-1]
    assert (last.code, last.stopped, last.killed) == (0, True, False)


async def test_a_stop_that_needed_sigkill_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="supervisor")
    script = f"trap '' TERM; {SYSTEMD_NOTIFY} --ready; sleep 3600"
    slot = agent(tmp_path, script, stop_timeout=0.3)
    async with trio.open_nursery() as nursery:
        slot.launch(nursery)
        await until(slot, lambda: slot.state == "running")
        slot.stop()
    last = slot.statistics().last_exit
    assert last is not None
    assert (last.signal, last.stopped, last.killed) == (9, True, True)
    assert slot.reason == "SIGKILL after stop_timeout"
    assert "n: stopped (SIGKILL after stop_timeout)" in caplog.messages
