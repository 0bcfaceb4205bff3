"""`user` and `group`, and a notify socket any uid can reach but only the agent may use."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
from pathlib import Path

import pytest
import trio

from supervisor.manifest import AgentSpec
from supervisor.runners import Outcome
from supervisor.runners.process import run_process

from .test_process_runner import Recorder

SYSTEMD_NOTIFY = shutil.which("systemd-notify")
SETPRIV = shutil.which("setpriv")
pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (user = ...)"),
    pytest.mark.skipif(SYSTEMD_NOTIFY is None, reason="needs systemd-notify (Debian's systemd)"),
]


def spec(tmp_path: Path, script: str, **keys: object) -> AgentSpec:
    return AgentSpec(
        id="u",
        kind="process",
        command=("sh", "-c", script),
        root=tmp_path,
        cwd=tmp_path,
        ready="notify",
        **keys,  # type: ignore[arg-type]
    )


def printed(hooks: Recorder) -> list[str]:
    return [line for stream, line in hooks.output_lines if stream == "stdout"]


async def test_an_agent_runs_as_its_user_and_can_notify(tmp_path: Path) -> None:
    hooks = Recorder()
    script = f'echo "$(id -u) $(id -g) $(id -G) $USER $LOGNAME $HOME"; {SYSTEMD_NOTIFY} --ready'
    with trio.fail_after(10):
        outcome = await run_process(spec(tmp_path, script, user="nobody"), hooks)
    assert outcome == Outcome(code=0)
    assert printed(hooks) == ["65534 65534 65534 nobody nobody /nonexistent"]
    assert hooks.ready_calls == 1


@pytest.mark.skipif(SETPRIV is None, reason="needs setpriv")
async def test_an_agent_that_drops_privileges_itself_can_notify(tmp_path: Path) -> None:
    hooks = Recorder()
    drop = f"{SETPRIV} --reuid=65534 --regid=65534 --clear-groups"
    script = f"{drop} sh -c '{SYSTEMD_NOTIFY} --ready --status=\"as $(id -u)\"'"
    with trio.fail_after(10):
        outcome = await run_process(spec(tmp_path, script), hooks)
    assert outcome == Outcome(code=0)
    assert hooks.ready_calls == 1
    assert hooks.statuses == ["as 65534"]


async def test_a_message_from_a_foreign_process_is_ignored(tmp_path: Path) -> None:
    # The agent prints its socket, waits for our (foreign) READY=1 to be sent, then says
    # STATUS itself: datagrams arrive in order, so by its STATUS ours was read, and dropped.
    go = tmp_path / "go"
    script = (
        f'echo "$NOTIFY_SOCKET"; while [ ! -e {go} ]; do sleep 0.01; done; '
        f"{SYSTEMD_NOTIFY} --status=mine; exec sleep 1000"
    )
    hooks = Recorder()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: run_process(spec(tmp_path, script), hooks))
            while not printed(hooks):  # noqa: ASYNC110 (the recorder has no event for it)
                await trio.sleep(0.01)
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(b"READY=1\nSTATUS=forged", printed(hooks)[0])
            go.touch()
            while not hooks.statuses:  # noqa: ASYNC110
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    assert hooks.statuses == ["mine"]
    assert hooks.ready_calls == 0


async def test_an_exec_probe_runs_as_the_agents_user(tmp_path: Path) -> None:
    from supervisor.manifest import ReadyProbe
    from supervisor.runners.dispatch import make_runner
    from supervisor.slot import Slot

    nobody = pwd.getpwnam("nobody")
    check = f'test "$(id -u)" = {nobody.pw_uid} && test "$(id -g)" = {nobody.pw_gid}'
    agent = AgentSpec(
        id="u",
        kind="process",
        command=("sleep", "3600"),
        root=tmp_path,
        cwd=Path("/"),
        user="nobody",
        ready=ReadyProbe(exec=("sh", "-c", check + ' && test "$HOME" = ' + nobody.pw_dir)),
        start_timeout=20,
    )
    slot = Slot(agent, make_runner())
    async with trio.open_nursery() as nursery:
        slot.launch(nursery)
        with trio.fail_after(30):
            while slot.state == "starting":
                await slot.changed.wait()
        state = slot.state
        slot.stop()
    assert state == "running", slot.health and slot.health.result
