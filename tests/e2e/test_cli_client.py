"""The CLI client and the API's state file, end to end against a real `supervisor run`.

Each test runs `supervisor run` in a subprocess with its API on a unix socket, then runs
the client commands (`status`, `reload`, `start`, `stop`, `restart`) as subprocesses and
checks their output and exit codes (docs/operations.md, README). Agents are `sleep` processes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest

from supervisor import cli
from supervisor.cli.client import api_address
from supervisor.cli.table import format_duration, format_table

from ..harness import SupervisorProcess, wait_until

pytestmark = pytest.mark.slow

SLEEP = '["sleep", "100000"]'
MANIFEST = f"""
[supervisor]
state_file = "state.toml"

[agents.web]
command = {SLEEP}

[agents.once]
command = ["true"]
restart = "never"

[agents.off]
command = {SLEEP}
enabled = false

[agents.mute]  # never says it is ready: a start that fails
command = {SLEEP}
ready = "notify"
start_timeout = 0.3
max_restarts = 0
enabled = false
"""


@pytest.fixture
def sock() -> Iterator[Path]:
    """A unix socket path short enough for AF_UNIX (108 bytes), whatever the test's name."""
    folder = Path(tempfile.mkdtemp(prefix="sv-api-"))
    yield folder / "api.sock"
    shutil.rmtree(folder)


@pytest.fixture(autouse=True)
def _no_outside_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SUPERVISOR_TOKEN", "SUPERVISOR_API", "SUPERVISOR_MANIFEST"):
        monkeypatch.delenv(name, raising=False)


def start_supervisor(
    tmp_path: Path, sock: Path, manifest: str = MANIFEST, env: dict[str, str] | None = None
) -> SupervisorProcess:
    path = tmp_path / "agents.toml"
    if not path.exists():
        path.write_text(manifest)
    sup = SupervisorProcess(path, "--api", f"unix:{sock}", env=env)
    # The socket file appears once it listens. (Probing with connects before that would
    # trip over httpcore leaking the socket of a failed unix connect.)
    wait_until(sock.exists, what="the API's socket")
    assert request(sock, "GET", "/healthz").status_code == 200
    return sup


def request(sock: Path, method: str, path: str, **kw: Any) -> httpx.Response:
    transport = httpx.HTTPTransport(uds=str(sock))
    with httpx.Client(base_url="http://api", transport=transport, timeout=10) as client:
        return client.request(method, path, **kw)


def run_cli(*args: str, env: dict[str, str] | None = None) -> Ran:
    """Run `supervisor ARGS...` in a subprocess and return what it did."""
    done = subprocess.run(
        [sys.executable, "-m", "supervisor", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
    )
    return Ran(done.returncode, done.stdout, done.stderr)


@attrs.frozen
class Ran:
    returncode: int
    stdout: str
    stderr: str


Client = Callable[..., Ran]


@pytest.fixture
def client(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Client:
    """Run `supervisor ARGS...` in this process (`cli.main`), which is quicker than a
    subprocess by the interpreter's start; `run_cli` checks the real command's wiring."""

    def run(*args: str, env: dict[str, str] | None = None) -> Ran:
        capsys.readouterr()
        with monkeypatch.context() as patch:
            for name, value in (env or {}).items():
                patch.setenv(name, value)
            code = cli.main(list(args))
        out = capsys.readouterr()
        return Ran(code, out.out, out.err)

    return run


def state(sock: Path, agent_id: str) -> str:
    answer = request(sock, "GET", f"/agents/{agent_id}")
    return str(answer.json().get("state", answer.status_code))


def test_status_exit_codes_and_control_commands(tmp_path: Path, sock: Path, client: Client) -> None:
    api = f"unix:{sock}"
    with start_supervisor(tmp_path, sock) as sup:
        wait_until(lambda: state(sock, "once") == "exited", what="once to exit")

        status = run_cli("status", "--api", api)  # the real command, once
        assert status.returncode == 0, status.stderr
        header, *rows = status.stdout.splitlines()
        assert header.split() == ["ID", "KIND", "STATE", "PID", "RESTARTS", "UPTIME", "CPU", "MEM", "LAST", "EXIT", "NOTE"]  # fmt: skip
        table = {row.split()[0]: row.split() for row in rows}
        assert table["web"][6].endswith("%")  # its CPU, and its memory
        assert table["web"][7][-1] in "KMG"
        assert table["off"][6:8] == ["-", "-"]
        assert table["web"][1:3] == ["process", "running"]
        assert table["web"][3] == str(request(sock, "GET", "/agents/web").json()["pid"])
        assert table["once"][2] == "exited"
        assert "code 0," in status.stdout
        assert table["off"][2] == "disabled"

        as_json = client("status", "--json", "--api", api)
        assert as_json.returncode == 0
        agents = json.loads(as_json.stdout)["agents"]
        assert [a["id"] for a in agents] == ["web", "once", "off", "mute"]
        assert agents[0].keys() == request(sock, "GET", "/agents").json()["agents"][0].keys()

        stop = client("stop", "web", "--api", api)
        assert (stop.returncode, stop.stdout) == (0, "web: stopped (stopped on request)\n")
        assert client("status", "--api", api).returncode == 1
        assert client("status", "web", "--api", api).returncode == 1
        assert client("status", "once", "--api", api).returncode == 0

        start = client("start", "web", "--api", api)
        assert (start.returncode, start.stdout) == (0, "web: running\n")
        pid = request(sock, "GET", "/agents/web").json()["pid"]
        restart = client("restart", "web", "--api", api)
        assert restart.returncode == 0
        assert request(sock, "GET", "/agents/web").json()["pid"] != pid
        assert client("status", "--api", api).returncode == 0

        for command in ("start", "stop", "restart", "status"):
            unknown = client(command, "nope", "--api", api)
            assert unknown.returncode == 1, command
            assert unknown.stderr == "supervisor: no agent 'nope'\n"

        body = {"id": "bad", "command": ["false"], "max_restarts": 0}
        assert request(sock, "POST", "/agents", json=body).status_code == 201
        wait_until(lambda: state(sock, "bad") == "failed", what="bad to fail")
        status = client("status", "--api", api)
        assert status.returncode == 1
        assert "gave up" in status.stdout
        failed_start = client("start", "mute", "--api", api)
        assert failed_start.returncode == 1
        assert failed_start.stdout.startswith("mute: failed (start timeout")
        sup.signal(signal.SIGTERM)
        assert sup.wait_exit() == 0


def test_reload_exit_codes(tmp_path: Path, sock: Path, client: Client) -> None:
    env = {"SUPERVISOR_API": f"unix:{sock}"}
    with start_supervisor(tmp_path, sock) as sup:
        manifest = tmp_path / "agents.toml"
        manifest.write_text(
            MANIFEST.replace("[agents.off]", f"[agents.new]\ncommand = {SLEEP}\n[agents.off]")
        )
        reload = client("reload", env=env)
        assert reload.returncode == 0, reload.stderr
        assert reload.stdout.splitlines() == [
            "started: new",
            "stopped: -",
            "restarted: -",
            "unchanged: 4 agents",
        ]

        manifest.write_text(MANIFEST + '[agents.typo]\ncomand = ["x"]\n')
        invalid = client("reload", env=env)
        assert invalid.returncode == 2
        assert "agents.typo.comand" in invalid.stderr
        assert 'did you mean "command"' in invalid.stderr
        assert invalid.stderr.endswith("reload refused: nothing changed\n")
        assert state(sock, "new") == "running"

        manifest.write_text(MANIFEST + '[agents.broken]\ncommand = ["/nonexistent/binary"]\n')
        broken = client("reload", env=env)
        assert broken.returncode == 1
        assert "stopped: new" in broken.stdout
        assert "failed to start: broken: " in broken.stdout
        sup.signal(signal.SIGTERM)
        assert sup.wait_exit() == 0


def test_no_supervisor_reachable_exits_2_without_a_traceback(sock: Path) -> None:
    # In subprocesses: httpcore leaks the socket of a failed unix connect, which this
    # process would report as a ResourceWarning.
    for command in (["status"], ["stop", "web"]):
        ran = run_cli(*command, env={"SUPERVISOR_API": f"unix:{sock}"})
        assert (ran.returncode, ran.stdout) == (2, ""), command
        assert ran.stderr.startswith(f"supervisor: cannot reach a supervisor at unix:{sock}: ")
        assert "--api or $SUPERVISOR_API" in ran.stderr
        assert "Traceback" not in ran.stderr


def test_the_token_comes_from_the_environment(tmp_path: Path, sock: Path, client: Client) -> None:
    api = f"unix:{sock}"
    with start_supervisor(tmp_path, sock, env={"SUPERVISOR_TOKEN": "t0ken"}) as sup:
        refused = client("stop", "web", "--api", api)
        assert refused.returncode == 2
        assert "refused: this route needs Authorization: Bearer <token>" in refused.stderr
        wrong = client("stop", "web", "--api", api, env={"SUPERVISOR_TOKEN": "nope"})
        assert (wrong.returncode, "wrong token" in wrong.stderr) == (2, True)
        assert client("status", "--api", api).returncode == 2  # agents' env: secrets
        assert client("status", "--api", api, env={"SUPERVISOR_TOKEN": "t0ken"}).returncode == 0
        done = client("stop", "web", "--api", api, env={"SUPERVISOR_TOKEN": "t0ken"})
        assert done.returncode == 0
        sup.signal(signal.SIGTERM)
        assert sup.wait_exit() == 0


# -- the state file -----------------------------------------------------------------


def test_agents_loaded_over_the_api_survive_a_restart(
    tmp_path: Path, sock: Path, client: Client
) -> None:
    extra = {"id": "extra", "command": ["sleep", "100000"], "env": {"WHY": "api"}}
    with start_supervisor(tmp_path, sock) as sup:
        assert request(sock, "POST", "/agents", json=extra).status_code == 201
        saved = (tmp_path / "state.toml").read_text()
        assert "[agents.extra]" in saved
        sup.signal(signal.SIGTERM)
        assert sup.wait_exit() == 0

    with start_supervisor(tmp_path, sock) as sup:
        wait_until(lambda: state(sock, "extra") == "running", what="extra to run again")
        agent = request(sock, "GET", "/agents/extra").json()
        assert (agent["source"], agent["spec"]["env"]) == ("api", {"WHY": "api"})
        reload = client("reload", "--api", f"unix:{sock}")
        assert "unchanged: 5 agents" in reload.stdout  # extra is part of the reload
        assert request(sock, "DELETE", "/agents/extra").status_code == 200
        assert "extra" not in (tmp_path / "state.toml").read_text()
        sup.signal(signal.SIGTERM)
        assert sup.wait_exit() == 0

    with start_supervisor(tmp_path, sock) as sup:
        assert request(sock, "GET", "/agents/extra").status_code == 404
        sup.signal(signal.SIGTERM)
        assert sup.wait_exit() == 0


def test_a_corrupt_state_file_is_reported_and_set_aside(
    tmp_path: Path, sock: Path, client: Client
) -> None:
    (tmp_path / "state.toml").write_text("[agents.extra\ncommand = ")
    with start_supervisor(tmp_path, sock) as sup:
        sup.wait_log("is invalid, moved to")
        (aside,) = tmp_path.glob("state.toml.corrupt-*")
        assert aside.read_text() == "[agents.extra\ncommand = "
        assert not (tmp_path / "state.toml").exists()
        wait_until(lambda: state(sock, "web") == "running", what="web to run")
        assert client("status", "--api", f"unix:{sock}").returncode == 0
        sup.signal(signal.SIGTERM)
        assert sup.wait_exit() == 0


# -- the client's pieces ------------------------------------------------------------


# What a client command does not load (docs/performance.md): each is milliseconds of every
# command's start. http.client loads email and ssl; typing 3 ms; pathlib loads urllib.parse
# and fnmatch; shutil (argparse's terminal width) zlib, bz2 and lzma; encodings.idna is
# getaddrinfo's codec for a str host name; socket (enums, selectors) is _socket and io.
NOT_IN_A_CLIENT = [
    *("http.client", "email", "ssl", "typing", "pathlib", "urllib.parse", "ipaddress"),
    *("shutil", "encodings.idna", "socket", "selectors", "trio", "supervisor.manifest"),
    "supervisor.cli.local",
]


@pytest.mark.parametrize(
    "command", [["status"], ["status", "--json"], ["stop", "x"], ["logs", "x"]]
)
def test_client_commands_load_only_what_they_use(command: list[str]) -> None:
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['supervisor', *{command!r}, '--api', '127.0.0.1:1']\n"
        "try:\n"
        "    runpy.run_module('supervisor', run_name='__main__')\n"
        "except SystemExit as exit:\n"
        f"    print(exit.code, sorted(m for m in {NOT_IN_A_CLIENT!r} if m in sys.modules))\n"
    )
    # -S: no site-packages, whose .pth files (the editable install's) would load pathlib;
    # the client needs nothing but the standard library.
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": root}
    out = subprocess.run(
        [sys.executable, "-S", "-c", code], capture_output=True, text=True, env=env, timeout=30
    )
    assert (out.stdout, out.returncode) == ("2 []\n", 0), out.stderr  # 2: nobody listens


def test_a_command_builds_its_own_parser_alone_and_the_same() -> None:
    """`main` builds only the parser of the command it runs (`build_parser(only)`)."""

    def commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
        (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        return dict(sub.choices)

    every = commands(cli.build_parser())
    assert tuple(every) == cli.COMMANDS
    for name in cli.COMMANDS:
        alone = commands(cli.build_parser(name))
        assert list(alone) == [name]
        assert alone[name].format_help() == every[name].format_help()


def test_the_api_address_comes_from_the_option_then_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert api_address(None) == "127.0.0.1:7070"
    monkeypatch.setenv("SUPERVISOR_API", "unix:/run/s.sock")
    assert api_address(None) == "unix:/run/s.sock"
    assert api_address("10.0.0.1:80") == "10.0.0.1:80"


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0, "0s"), (59.9, "59s"), (60, "1m00s"), (187, "3m07s"), (7500, "2h05m"), (273600, "3d04h")],
)
def test_durations_read_like_ps(seconds: float, shown: str) -> None:
    assert format_duration(seconds) == shown


def test_the_status_table() -> None:
    now = 1_000_000.0
    agents: list[dict[str, Any]] = [
        {
            "id": "web", "kind": "process", "state": "running", "pid": 42, "restarts": 2,
            "since": now - 75, "last_exit": {"at": now - 80, "signal": "SIGKILL"},
            "spec": {}, "up": True, "status": "serving", "reason": "", "cpu": 12.34,
            "rss": 35_861_299,
        },
        {
            "id": "worker-long-name", "kind": "in-process", "state": "failed", "pid": None,
            "restarts": 5, "since": now - 5,
            "last_exit": {"at": now - 5, "error": "ValueError: " + "x" * 60},
            "spec": {}, "up": False, "status": "", "reason": "gave up after 5 restarts",
        },
    ]  # fmt: skip
    assert format_table(agents, now=now).splitlines() == [
        "ID                KIND        STATE    PID  RESTARTS  UPTIME  CPU    MEM    LAST EXIT                                         NOTE",
        "web               process     running  42   2         1m15s   12.3%  34.2M  SIGKILL, 1m20s ago                                serving",
        "worker-long-name  in-process  failed   -    5         -       -      -      ValueError: xxxxxxxxxxxxxxxxxxxxxxxxxxx…, 5s ago  gave up after 5 restarts",
    ]  # fmt: skip


def test_ids_are_quoted_whole(tmp_path: Path, sock: Path, client: Client) -> None:
    """`supervisor start '../reload?'` asks for that agent, not for a reload."""
    with start_supervisor(tmp_path, sock) as sup:
        for command in ("start", "stop", "restart", "status"):
            ran = client(command, "../reload?", "--api", f"unix:{sock}")
            assert ran.returncode == 1, (command, ran)
            assert ran.stderr.startswith("supervisor: no "), ran.stderr
        metrics = request(sock, "GET", "/metrics").text
        assert 'supervisor_reloads_total{result="ok"} 0.0' in metrics
        sup.signal(signal.SIGTERM)
        assert sup.wait_exit() == 0
