"""The process runner with real processes, real signals and real pipes.

Each test builds an AgentSpec, runs it through `run_process` with hooks that record
what they are told, and asserts on the Outcome, the hooks and the relayed output. The
`hooks` fixture checks, after every test, that nothing of any group it saw is left.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

import supervisor.runners.notify
from supervisor.logs import LINES_PER_STEP
from supervisor.manifest import AgentSpec
from supervisor.output import LINE_LIMIT
from supervisor.runners import Outcome, spawn
from supervisor.runners.process import run_process

from ..harness import group_members

AGENTS = Path(__file__).parents[1] / "agents"
SIGNALS_AGENT = str(AGENTS / "proc_signals.py")
SYSTEMD_NOTIFY = "/usr/bin/systemd-notify"


class Recorder:
    """Hooks that remember every call, with events to wait on."""

    def __init__(self) -> None:
        self.output_lines: list[tuple[str, str]] = []
        self.pids: list[int | None] = []
        self.ready_calls = 0
        self.statuses: list[str] = []
        self.said: list[str] = []  # the other notifications, in order
        self.stop_outcomes: list[Outcome] = []
        self.is_launched = trio.Event()
        self.is_ready = trio.Event()

    refuse: str | None = None  # what may_spawn answers

    def may_spawn(self) -> str | None:
        return self.refuse

    def launched(self, pid: int | None) -> None:
        self.pids.append(pid)
        self.is_launched.set()

    def ready(self) -> None:
        self.ready_calls += 1
        self.is_ready.set()

    def status(self, text: str) -> None:
        self.statuses.append(text)

    def output(self, stream: str, lines: Sequence[str]) -> None:
        self.output_lines.extend((stream, line) for line in lines)

    def stopping(self) -> None:
        self.said.append("stopping")

    def reloading(self) -> None:
        self.said.append("reloading")

    def extend_timeout(self, seconds: float) -> None:
        self.said.append(f"extend {seconds:g}")

    def heartbeat(self) -> None:
        self.said.append("heartbeat")

    def fail(self, reason: str) -> None:
        self.said.append(f"fail: {reason}")

    def stopped(self, outcome: Outcome) -> None:
        self.stop_outcomes.append(outcome)

    def on_stop(self, callback: Callable[[], None]) -> None:
        pass  # a process learns of its stop from its stop signal


def wait_until_gone(pgid: int, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while members := group_members(pgid):
        assert time.monotonic() < deadline, f"group {pgid} still has {members}"
        time.sleep(0.01)


async def wait_for_members(pgid: int, count: int) -> list[int]:
    with trio.fail_after(5):
        while True:  # /proc offers no event to wait on
            if len(members := group_members(pgid)) >= count:
                return members
            await trio.sleep(0.01)


@pytest.fixture
def hooks() -> Iterator[Recorder]:
    recorder = Recorder()
    yield recorder
    for pid in recorder.pids:
        assert pid is not None
        wait_until_gone(pid)


@pytest.fixture
def output(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="supervisor")
    return caplog


def spec(tmp_path: Path, *command: str, **keys: Any) -> AgentSpec:
    return AgentSpec(id="t", kind="process", command=command, root=tmp_path, cwd=tmp_path, **keys)


def lines(caplog: pytest.LogCaptureFixture, stream: str = "stdout") -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "supervisor.output" and getattr(r, "stream", None) == stream
    ]


async def stop_after(
    nursery: trio.Nursery, event: trio.Event, spec_: AgentSpec, hooks: Recorder
) -> list[BaseException]:
    """Start the agent in `nursery`; cancel it once `event` is set. Returns what it raised."""
    raised: list[BaseException] = []

    async def run() -> None:
        try:
            await run_process(spec_, hooks)
        except BaseException as exc:
            raised.append(exc)
            raise

    nursery.start_soon(run)
    await event.wait()
    nursery.cancel_scope.cancel()
    return raised


# -- exits -------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [0, 3])
async def test_exit_code_is_recorded(tmp_path: Path, hooks: Recorder, code: int) -> None:
    with trio.fail_after(5):
        outcome = await run_process(spec(tmp_path, "sh", "-c", f"exit {code}"), hooks)
    assert outcome == Outcome(code=code)
    assert len(hooks.pids) == 1
    assert hooks.ready_calls == 1


async def test_death_by_signal_is_recorded(tmp_path: Path, hooks: Recorder) -> None:
    with trio.fail_after(5):
        outcome = await run_process(spec(tmp_path, "sh", "-c", "kill -TERM $$"), hooks)
    assert outcome == Outcome(signal=signal.SIGTERM)


async def test_what_is_left_of_the_group_is_killed_when_the_leader_exits(
    tmp_path: Path, hooks: Recorder
) -> None:
    # The background sleep holds no pipe of ours, so only the group kill ends it.
    command = "sleep 1000 >/dev/null 2>&1 & echo started"
    with trio.fail_after(5):
        outcome = await run_process(spec(tmp_path, "sh", "-c", command), hooks)
    assert outcome == Outcome(code=0)
    # The fixture asserts the group is gone.


# -- stopping ----------------------------------------------------------------------------


async def test_stop_kills_the_whole_group(tmp_path: Path, hooks: Recorder) -> None:
    command = "sleep 1000 & sleep 1000 & wait"
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            raised = await stop_after(
                nursery, hooks.is_launched, spec(tmp_path, "sh", "-c", command), hooks
            )
            pgid = hooks.pids[0]
            assert pgid is not None
            await wait_for_members(pgid, 3)
    assert group_members(pgid) == []
    # The stop surfaces as the bare Cancelled that caused it, not an exception group.
    assert len(raised) == 1
    assert isinstance(raised[0], trio.Cancelled)


async def test_stop_escalates_to_sigkill_after_stop_timeout(
    tmp_path: Path, hooks: Recorder
) -> None:
    agent = spec(
        tmp_path, sys.executable, SIGNALS_AGENT, "ignore-term", ready="notify", stop_timeout=0.5
    )
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await stop_after(nursery, hooks.is_ready, agent, hooks)
            stopping_at = trio.current_time()
    took = trio.current_time() - stopping_at
    assert 0.5 <= took < 1.0


async def test_stop_signal_is_delivered_and_stop_output_relayed(
    tmp_path: Path, hooks: Recorder, output: pytest.LogCaptureFixture
) -> None:
    agent = spec(tmp_path, sys.executable, SIGNALS_AGENT, ready="notify", stop_signal=signal.SIGINT)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await stop_after(nursery, hooks.is_ready, agent, hooks)
            stopping_at = trio.current_time()
    assert lines(output) == ["stopped by SIGINT"]
    assert trio.current_time() - stopping_at < 1.0  # it exited; no wait for stop_timeout


# -- environment -------------------------------------------------------------------------


async def test_env_and_cwd_are_applied(
    tmp_path: Path,
    hooks: Recorder,
    output: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FROM_SUPERVISOR", "inherited")
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")  # ours, not the agent's
    workdir = tmp_path / "work"
    workdir.mkdir()
    command = 'echo "$FOO $FROM_SUPERVISOR ${NOTIFY_SOCKET:-unset}"; pwd; read x; echo "stdin:$?"'
    agent = attrs.evolve(spec(tmp_path, "sh", "-c", command, env={"FOO": "bar"}), cwd=workdir)
    with trio.fail_after(5):
        assert await run_process(agent, hooks) == Outcome(code=0)
    assert lines(output) == ["bar inherited unset", str(workdir), "stdin:1"]


# -- output ------------------------------------------------------------------------------


async def test_output_is_relayed_line_by_line_and_tagged(
    tmp_path: Path, hooks: Recorder, output: pytest.LogCaptureFixture
) -> None:
    command = r"echo one; echo err >&2; echo; printf 'two\nthree\n'; printf '\377\n'"
    with trio.fail_after(5):
        await run_process(spec(tmp_path, "sh", "-c", command), hooks)
    assert lines(output) == ["one", "", "two", "three", "\ufffd"]
    assert lines(output, "stderr") == ["err"]
    assert {getattr(r, "agent", None) for r in output.records} == {"t"}


async def test_partial_last_line_is_flushed(
    tmp_path: Path, hooks: Recorder, output: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(5):
        await run_process(spec(tmp_path, "printf", "a\nno newline"), hooks)
    assert lines(output) == ["a", "no newline"]


async def test_very_long_lines_are_relayed_in_pieces(
    tmp_path: Path, hooks: Recorder, output: pytest.LogCaptureFixture
) -> None:
    size = 3 * LINE_LIMIT + 10
    command = f"import sys; sys.stdout.write('x' * {size} + '\\nend')"
    with trio.fail_after(5):
        await run_process(spec(tmp_path, sys.executable, "-c", command), hooks)
    assert [len(line) for line in lines(output)] == [LINE_LIMIT] * 3 + [10, 3]


async def test_a_chatty_child_does_not_hog_the_loop(
    tmp_path: Path, hooks: Recorder, output: pytest.LogCaptureFixture
) -> None:
    # Counted in lines, not seconds, so a loaded machine cannot make it flaky: between
    # two turns of another task, the relay gets at most a turn or two of its own.
    most_lines_between_turns = 0

    async def other_task() -> None:
        nonlocal most_lines_between_turns
        seen = 0
        while True:
            await trio.lowlevel.checkpoint()
            most_lines_between_turns = max(most_lines_between_turns, len(output.records) - seen)
            seen = len(output.records)

    # Generous: on a loaded machine relaying 20,000 lines through `logging` takes seconds,
    # and every line must still arrive (the drain waits while output flows).
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(other_task)
            outcome = await run_process(spec(tmp_path, "sh", "-c", "yes | head -n 20000"), hooks)
            nursery.cancel_scope.cancel()
    assert outcome == Outcome(code=0)
    assert lines(output) == ["y"] * 20000
    assert 0 < most_lines_between_turns <= 2 * LINES_PER_STEP


# -- start failures ----------------------------------------------------------------------


@pytest.fixture(params=["popen", "posix_spawn"])
def either_spawn(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """Both spawns give the same errors: an agent whose cwd is the supervisor's is tried
    by posix_spawn first (`supervisor.runners.spawn`), any other by Popen alone."""
    if request.param == "posix_spawn":
        monkeypatch.chdir(tmp_path)
    spawn._found.clear()
    yield
    spawn._found.clear()


@pytest.mark.usefixtures("either_spawn")
async def test_command_not_found(tmp_path: Path, hooks: Recorder) -> None:
    outcome = await run_process(spec(tmp_path, "pyhton", "-V"), hooks)
    assert outcome == Outcome(start_failed=True, error="command not found: 'pyhton'")
    assert hooks.pids == []


@pytest.mark.usefixtures("either_spawn")
async def test_not_executable(tmp_path: Path, hooks: Recorder) -> None:
    (tmp_path / "x.sh").write_text("#!/bin/sh\necho hi\n")
    outcome = await run_process(spec(tmp_path, "./x.sh"), hooks)
    assert outcome == Outcome(
        start_failed=True, error="permission denied: './x.sh' is not executable"
    )


async def test_cwd_does_not_exist(tmp_path: Path, hooks: Recorder) -> None:
    agent = AgentSpec(id="t", kind="process", command=("true",), root=tmp_path, cwd=Path("/nope"))
    outcome = await run_process(agent, hooks)
    assert outcome == Outcome(start_failed=True, error="cwd does not exist: '/nope'")


@pytest.mark.usefixtures("either_spawn")
async def test_missing_interpreter_is_explained(tmp_path: Path, hooks: Recorder) -> None:
    script = tmp_path / "x.sh"
    script.write_text("#!/no/such/shell\n")
    script.chmod(0o755)
    outcome = await run_process(spec(tmp_path, "./x.sh"), hooks)
    assert outcome == Outcome(
        start_failed=True, error="cannot run './x.sh': its #! interpreter was not found"
    )


# -- readiness ---------------------------------------------------------------------------


async def test_notify_ready_from_a_python_child(tmp_path: Path, hooks: Recorder) -> None:
    agent = spec(tmp_path, sys.executable, SIGNALS_AGENT, ready="notify")
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await stop_after(nursery, hooks.is_ready, agent, hooks)
    assert hooks.ready_calls == 1
    assert hooks.statuses == ["armed"]


async def test_notify_ready_from_systemd_notify_in_a_shell_script(
    tmp_path: Path, hooks: Recorder, output: pytest.LogCaptureFixture
) -> None:
    # systemd-notify is a short-lived grandchild, and waits on a barrier we must answer.
    command = f'{SYSTEMD_NOTIFY} --ready --status="serving"; echo "notify:$?"'
    with trio.fail_after(5):
        outcome = await run_process(spec(tmp_path, "sh", "-c", command, ready="notify"), hooks)
    assert outcome == Outcome(code=0)
    assert hooks.ready_calls == 1
    assert hooks.statuses == ["serving"]
    assert lines(output) == ["notify:0"]  # the barrier was answered, promptly


async def test_notify_agent_that_never_says_ready(
    tmp_path: Path, hooks: Recorder, output: pytest.LogCaptureFixture
) -> None:
    command = f'{SYSTEMD_NOTIFY} --status="still booting"; echo "notify:$?"'
    with trio.fail_after(5):
        outcome = await run_process(spec(tmp_path, "sh", "-c", command, ready="notify"), hooks)
    assert outcome == Outcome(code=0)
    assert hooks.statuses == ["still booting"]
    assert hooks.ready_calls == 0
    assert lines(output) == ["notify:0"]  # the barrier was answered, promptly


async def test_running_out_of_descriptors_is_a_failed_start_that_leaks_nothing(
    tmp_path: Path, hooks: Recorder
) -> None:
    # Each limit makes a different step of the start fail: the notify socket, a pipe,
    # Popen's own descriptors. Whichever it is, no descriptor and no child is left.
    open_fds = len(os.listdir("/proc/self/fd"))  # counts the listing's own fd too
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    outcomes = set()
    try:
        for limit in range(open_fds - 2, open_fds + 10):
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
            with trio.fail_after(5):
                outcomes.add(await run_process(spec(tmp_path, "true", ready="notify"), hooks))
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            assert len(os.listdir("/proc/self/fd")) == open_fds
            assert children() == []
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert outcomes == {
        Outcome(code=0),
        Outcome(
            start_failed=True,
            error="cannot start 'true': the supervisor has too many open files "
            "(raise its limit: ulimit -n, LimitNOFILE=)",
            short_of_resources=True,
        ),
    }


def children() -> list[int]:
    """Our live child processes."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except (OSError, ValueError):
            continue
        if int(fields[1]) == os.getpid() and fields[0] not in ("Z", "X"):
            found.append(int(entry))
    return found


async def test_no_room_for_the_notify_socket(
    tmp_path: Path, hooks: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(supervisor.runners.notify, "_runtime_dir", None)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing"))
    outcome = await run_process(spec(tmp_path, "true", ready="notify"), hooks)
    assert outcome.start_failed
    assert outcome.error is not None
    assert outcome.error.startswith("cannot create a $NOTIFY_SOCKET: No such file or directory")
    assert outcome.error.endswith("; set TMPDIR to a writable folder")
