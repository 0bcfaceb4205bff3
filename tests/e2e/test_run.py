"""End to end: a real `supervisor run` with real processes, signals and files.

Agents here are small shell scripts that record each start ("PID VERSION" in NAME.starts)
and each event ("start NAME" / "stop NAME" in `events`), so a test can tell exactly
which agents were started, restarted or left alone.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from ..harness import SupervisorProcess, alive, lines, wait_until

pytestmark = pytest.mark.slow


def recorder(tmp: Path, name: str, *, notify: bool = False) -> dict[str, Any]:
    """An agent that records its starts (and, with `notify`, its stops), then idles.

    Without `notify` it execs `sleep`, which SIGTERM ends at once. With `notify` a trap
    records the stop; it is only stopped once ready, after `sleep` has been forked (a
    TERM arriving before that fork would leave `sleep` to its stop_timeout).
    """
    start = f'echo "$$ $V" >> {tmp}/{name}.starts; echo start {name} >> {tmp}/events; '
    if notify:
        trap = f'trap "echo stop {name} >> {tmp}/events; exit 0" TERM; '
        script = f"{trap}{start}sleep 100000 & systemd-notify --ready; wait"
    else:
        script = f"{start}exec sleep 100000"
    agent: dict[str, Any] = {"command": ["sh", "-c", script], "env": {"V": "1"}}
    if notify:
        agent["ready"] = "notify"
    return agent


def write(path: Path, agents: dict[str, dict[str, Any]], **supervisor: Any) -> None:
    doc: dict[str, Any] = {"agents": agents}
    if supervisor:
        doc["supervisor"] = supervisor
    tmp = path.with_suffix(".tmp")
    tmp.write_text(tomli_w.dumps(doc))
    tmp.replace(path)


def starts(tmp: Path, name: str) -> list[tuple[int, str]]:
    return [(int(p), v) for p, v in (line.split() for line in lines(tmp / f"{name}.starts"))]


def running_pid(tmp: Path, name: str) -> int:
    """The pid of the agent's latest start, once it is alive."""
    return wait_until(
        lambda: (s := starts(tmp, name)) and alive(s[-1][0]) and s[-1][0], what=f"{name} up"
    )


def test_reload_touches_only_what_changed(tmp_path: Path) -> None:
    m = tmp_path / "agents.toml"
    agents = {n: recorder(tmp_path, n) for n in ("keep", "change", "drop")}
    write(m, agents)
    with SupervisorProcess(m) as sup:
        pids = {n: running_pid(tmp_path, n) for n in agents}
        agents["change"]["env"] = {"V": "2"}
        del agents["drop"]
        agents["new"] = recorder(tmp_path, "new")
        write(m, agents)
        sup.signal(signal.SIGHUP)
        sup.wait_log("reloaded: 1 started, 1 stopped, 1 restarted, 1 unchanged")
        wait_until(
            lambda: starts(tmp_path, "change")[-1:] and starts(tmp_path, "change")[-1][1] == "2"
        )
        running_pid(tmp_path, "new")
        assert starts(tmp_path, "keep") == [(pids["keep"], "1")]
        assert alive(pids["keep"])
        assert not alive(pids["drop"])
        assert not alive(pids["change"])


def test_invalid_manifest_on_reload_changes_nothing(tmp_path: Path) -> None:
    m = tmp_path / "agents.toml"
    write(m, {"a": recorder(tmp_path, "a")})
    with SupervisorProcess(m) as sup:
        pid = running_pid(tmp_path, "a")
        m.write_text('[agents.a]\ncommand = ["true"]\nrestart = "sometimes"\n')
        sup.signal(signal.SIGHUP)
        sup.wait_log("reload failed, nothing changed")
        assert "agents.a.restart" in sup.output()
        assert starts(tmp_path, "a") == [(pid, "1")]
        assert alive(pid)
        assert sup.proc.poll() is None


def test_sighup_storm_converges_to_last_file(tmp_path: Path) -> None:
    m = tmp_path / "agents.toml"
    agent = recorder(tmp_path, "a")
    write(m, {"a": agent})
    with SupervisorProcess(m) as sup:
        running_pid(tmp_path, "a")
        for version in range(2, 31):
            agent["env"] = {"V": str(version)}
            others = {f"x{version}": recorder(tmp_path, f"x{version}")} if version % 3 else {}
            write(m, {"a": agent, **others})
            sup.signal(signal.SIGHUP)
        # The last file: `a` at version 30 and nothing else (30 % 3 == 0).
        wait_until(lambda: starts(tmp_path, "a")[-1][1] == "30", what="version 30 of a")
        pid = running_pid(tmp_path, "a")
        leftovers = [p for n in range(2, 31) for p, _ in starts(tmp_path, f"x{n}") if alive(p)]
        wait_until(lambda: not [p for p in leftovers if alive(p)], what="x agents gone")
        assert alive(pid)
        assert sup.proc.poll() is None


def test_watch_sees_a_configmap_symlink_swap(tmp_path: Path) -> None:
    """Kubernetes updates a ConfigMap volume by swapping the `..data` symlink."""
    vol = tmp_path / "config"
    vol.mkdir()
    (vol / "..2026_01").mkdir()
    write(vol / "..2026_01" / "agents.toml", {"a": recorder(tmp_path, "a")})
    (vol / "..data").symlink_to("..2026_01")
    (vol / "agents.toml").symlink_to("..data/agents.toml")
    with SupervisorProcess(vol / "agents.toml", "--watch") as sup:
        pid = running_pid(tmp_path, "a")
        (vol / "..2026_02").mkdir()
        agents = {"a": recorder(tmp_path, "a"), "b": recorder(tmp_path, "b")}
        write(vol / "..2026_02" / "agents.toml", agents)
        (vol / "..data_tmp").symlink_to("..2026_02")
        (vol / "..data_tmp").rename(vol / "..data")
        shutil.rmtree(vol / "..2026_01")
        running_pid(tmp_path, "b")
        sup.wait_log("reloaded: 1 started, 0 stopped, 0 restarted, 1 unchanged")
        assert starts(tmp_path, "a") == [(pid, "1")]


@pytest.mark.skipif(not shutil.which("systemd-notify"), reason="needs systemd-notify")
def test_ordered_start_and_reverse_stop(tmp_path: Path) -> None:
    m = tmp_path / "agents.toml"
    agents = {
        "web": {**recorder(tmp_path, "web", notify=True), "after": ["app"]},
        "app": {**recorder(tmp_path, "app", notify=True), "after": ["db"]},
        "db": recorder(tmp_path, "db", notify=True),
        "cache": recorder(tmp_path, "cache", notify=True),
    }
    write(m, agents)
    with SupervisorProcess(m) as sup:
        for name in agents:
            running_pid(tmp_path, name)
        sup.wait_log("web: running")
        sup.signal(signal.SIGTERM)
        assert sup.wait_exit() == 0
    events = [e for e in lines(tmp_path / "events") if "cache" not in e]
    assert events == ["start db", "start app", "start web", "stop web", "stop app", "stop db"]


def test_critical_failure_exits_3_and_stops_the_rest(tmp_path: Path) -> None:
    m = tmp_path / "agents.toml"
    write(
        m,
        {
            "other": recorder(tmp_path, "other"),
            "db": {"command": ["sh", "-c", "exit 7"], "critical": True, "restart": "never"},
        },
    )
    with SupervisorProcess(m) as sup:
        assert sup.wait_exit() == 3
        assert "critical agent 'db' failed: exited with code 7" in sup.output()
    assert all(not alive(pid) for pid, _ in starts(tmp_path, "other"))


def test_sigterm_stops_gracefully_and_a_second_kills(tmp_path: Path) -> None:
    m = tmp_path / "agents.toml"
    stubborn = {
        "command": ["sh", "-c", f'trap "" TERM; echo $$ > {tmp_path}/pid; sleep 100000 & wait'],
        "stop_timeout": 60.0,
    }
    write(m, {"stubborn": stubborn, "a": recorder(tmp_path, "a")}, shutdown_timeout=120.0)
    with SupervisorProcess(m) as sup:
        pid = wait_until(lambda: lines(tmp_path / "pid") and int(lines(tmp_path / "pid")[0]))
        running_pid(tmp_path, "a")
        sup.signal(signal.SIGTERM)
        sup.wait_log("stopping gracefully")
        wait_until(lambda: not alive(starts(tmp_path, "a")[0][0]), what="a stopped")
        assert alive(pid)
        sup.signal(signal.SIGTERM)
        assert sup.wait_exit(timeout=10) == 0
        assert not alive(pid)


def test_no_agent_outlives_a_sigkilled_supervisor(tmp_path: Path) -> None:
    m = tmp_path / "agents.toml"
    script = f"sleep 100000 & echo $! >> {tmp_path}/pids; echo $$ >> {tmp_path}/pids; wait"
    write(m, {"a": {"command": ["sh", "-c", script]}})
    with SupervisorProcess(m) as sup:
        pids = wait_until(lambda: len(lines(tmp_path / "pids")) == 2 and lines(tmp_path / "pids"))
        sup.signal(signal.SIGKILL)
        sup.wait_exit()
    wait_until(lambda: not any(alive(int(p)) for p in pids), what="agent and grandchild gone")


def test_hundred_reloads_restart_only_the_changed_agent(tmp_path: Path) -> None:
    m = tmp_path / "agents.toml"
    agents = {n: recorder(tmp_path, n) for n in ("a", "b", "c")}
    write(m, agents)
    with SupervisorProcess(m) as sup:
        pids = {n: running_pid(tmp_path, n) for n in ("a", "b")}
        for version in range(2, 102):
            agents["c"]["env"] = {"V": str(version)}
            write(m, agents)
            sup.signal(signal.SIGHUP)
            sup.wait_log(
                "reloaded: 0 started, 0 stopped, 1 restarted, 2 unchanged", count=version - 1
            )
            # c records its start once its shell runs: wait for it, or the next reload
            # may stop this c before it wrote (its start is then never recorded)
            wait_until(lambda v=version: len(starts(tmp_path, "c")) == v, what=f"c {version}")
        assert {n: starts(tmp_path, n) for n in pids} == {n: [(p, "1")] for n, p in pids.items()}


UNSHARE = shutil.which("unshare")


@pytest.mark.skipif(os.geteuid() != 0 or not UNSHARE, reason="needs root and unshare")
def test_pid1_reaps_orphans_and_keeps_exit_codes(tmp_path: Path) -> None:
    """As PID 1 in a real PID namespace: orphans are reaped, agents' exit codes kept."""
    m = tmp_path / "agents.toml"
    orphans = "while true; do (sleep 0.01 &); sleep 0.02; done"
    write(
        m,
        {
            "orphaner": {"command": ["sh", "-c", orphans]},
            "three": {
                "command": ["sh", "-c", "sleep 0.3; exit 3"],
                "restart": "on-failure",
                "max_restarts": 3,
                "backoff": {"initial": 0.05},
            },
        },
    )
    prefix = [UNSHARE, "--pid", "--fork", "--mount-proc", "--kill-child"]
    with SupervisorProcess(m, prefix=prefix) as sup:
        sup.wait_log("three: failed (exited with code 3; gave up after 3 restarts", timeout=20)
        assert sup.output().count("exited with code 3") >= 4
        assert "exited with code 0" not in sup.output()
        inner = wait_until(lambda: _children(sup.pid), what="supervisor in the namespace")[0]
        # Orphans keep coming; the zombies among the supervisor's children stay few.
        for _ in range(5):
            wait_until(lambda: len(_zombies(inner)) < 5, what="orphans reaped")
        os.kill(inner, signal.SIGTERM)  # unshare does not forward signals
        assert sup.wait_exit() == 0


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for f in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            out += [int(p) for p in f.read_text().split()]
        except OSError:
            pass
    return out


def _zombies(pid: int) -> list[int]:
    return [c for c in _children(pid) if not alive(c) and Path(f"/proc/{c}").exists()]


def test_invalid_manifest_at_start_exits_2(tmp_path: Path) -> None:
    m = tmp_path / "agents.toml"
    m.write_text('[agents.a]\ncommand = ["true"]\nbogus = 1\n')
    proc = subprocess.run(
        [sys.executable, "-m", "supervisor", "run", str(m), "--api", ""],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "agents.a" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def _sleeping(arg: str) -> list[int]:
    """Live `sleep ARG` processes."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if (
                proc.name.isdigit()
                and (proc / "cmdline").read_bytes() == f"sleep\0{arg}\0".encode()
            ) and alive(int(proc.name)):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


@pytest.mark.parametrize("round_", range(4))
def test_no_agent_outlives_a_supervisor_sigkilled_while_starting(
    tmp_path: Path, round_: int
) -> None:
    """A child forked just before the keeper heard of it must die too."""
    arg = f"{200000 + os.getpid() % 1000 * 10 + round_}"
    m = tmp_path / "agents.toml"
    write(m, {f"s{i}": {"command": ["sleep", arg]} for i in range(40)})
    with SupervisorProcess(m) as sup:
        wait_until(lambda: len(_sleeping(arg)) >= 3 + 3 * round_, what="some agents started")
        sup.signal(signal.SIGKILL)
        sup.wait_exit()
    wait_until(lambda: not _sleeping(arg), what="every agent gone")


def test_run_does_not_import_the_client_library() -> None:
    """httpx (and what it pulls in) costs ~60 ms and 8 MiB; only client commands need it."""
    code = "import sys, supervisor.cli, supervisor.run; print('httpx' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_descriptors_the_supervisor_was_given_do_not_reach_its_agents(tmp_path: Path) -> None:
    """posix_spawn (an agent in the supervisor's cwd) closes no descriptor in the child as
    Popen does: ours are all close-on-exec, those we were given too (runners/spawn.py)."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    check = '[ -e /proc/$$/fd/7 ] && echo "$A leaked" || echo "$A closed"'
    m = tmp_path / "agents.toml"
    write(
        m,
        {
            name: {"command": ["sh", "-c", check], "env": {"A": name}, "restart": "never"}
            | ({"cwd": str(elsewhere)} if name == "there" else {})
            for name in ("here", "there")
        },
    )
    given = ["sh", "-c", 'exec 7</dev/null; exec "$@"', "sh"]  # fd 7, inheritable
    with SupervisorProcess(m, prefix=given) as sup:
        sup.wait_log("here closed")
        sup.wait_log("there closed")
        assert "leaked" not in sup.output()
