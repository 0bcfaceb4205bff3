"""Real programs under a root supervisor: redis and PostgreSQL, as docs/recipes.md runs them.

redis with `--supervised systemd` and PostgreSQL (Debian's, built with systemd notify) as
`user = "postgres"`, both `ready = "notify"`; and PostgreSQL dropping privileges itself
with `setpriv`. Each must come up (running only once a real client is served), come back
after a SIGKILL of its main pid (its old children gone: PostgreSQL refuses to start while
they hold its shared memory), and end cleanly on `supervisor stop` and on a graceful
SIGTERM of the supervisor: no process left (nothing running in its folder), PostgreSQL's
log saying "database system is shut down", `last_exit` recorded as a stop.

CI installs the programs from Debian (.ci/run); without them these tests skip.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..harness import SupervisorProcess, alive, wait_until
from .test_cli_client import run_cli, start_supervisor
from .test_health import agent, free_port
from .test_run import write

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (a supervisor with `user = ...`)"),
]

UP = 60.0  # generous: PostgreSQL's start can take seconds on a loaded machine


def speaks_notify(program: Path) -> bool:
    """Whether `program` was built with sd_notify support (libsystemd, or its own)."""
    data = program.read_bytes()
    return b"sd_notify" in data or b"NOTIFY_SOCKET" in data


def _version(bin_dir: Path) -> int:
    name = bin_dir.parent.name
    return int(name) if name.isdigit() else 0


def postgres_bin() -> Path | None:
    """The bin folder of Debian's newest PostgreSQL, else of a `postgres` on PATH, if it
    can notify (a build without systemd support would never say READY=1)."""
    found = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/postgres")]
    found.sort(key=_version, reverse=True)
    if on_path := shutil.which("postgres"):
        found.append(Path(on_path).resolve().parent)
    return next((d for d in found if speaks_notify(d / "postgres")), None)


def redis_bin() -> Path | None:
    program = shutil.which("redis-server")
    return Path(program) if program and speaks_notify(Path(program)) else None


PG = postgres_bin()
REDIS = redis_bin()
needs_postgres = pytest.mark.skipif(
    PG is None or not (PG / "initdb").exists() or not (PG / "psql").exists(),
    reason="needs PostgreSQL built with systemd notify, with initdb and psql "
    "(Debian's postgresql package)",
)
needs_postgres_user = pytest.mark.skipif(
    not any(p.pw_name == "postgres" for p in pwd.getpwall()),
    reason="needs the user postgres (Debian's postgresql package makes it)",
)
needs_redis = pytest.mark.skipif(
    REDIS is None, reason="needs redis-server built with systemd notify (Debian's redis-server)"
)


@pytest.fixture
def home() -> Iterator[Path]:
    """A folder in /tmp the programs' users can traverse (pytest's tmp_path is root's
    0700), holding the API's socket and each program's own folder."""
    folder = Path(tempfile.mkdtemp(prefix="sv-real-"))
    folder.chmod(0o711)
    yield folder
    shutil.rmtree(folder)


def owned_folder(path: Path, user: str) -> Path:
    """`path`, made a 0700 folder of `user` (as a program's data folder must be)."""
    path.mkdir(exist_ok=True)
    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid)
    path.chmod(0o700)
    return path


@pytest.fixture(scope="module")
def pg_template() -> Iterator[Path]:
    """One `initdb` (as postgres) per module; each test copies it (`cp -a`)."""
    assert PG is not None
    folder = Path(tempfile.mkdtemp(prefix="sv-pginit-"))
    folder.chmod(0o711)
    owned_folder(folder / "pg", "postgres")
    subprocess.run(
        [PG / "initdb", "-D", "data", "-A", "trust", "-U", "postgres", "--no-sync"],
        cwd=folder / "pg",
        user="postgres",
        group="postgres",
        extra_groups=[],
        capture_output=True,
        check=True,
        timeout=120,
    )
    yield folder / "pg"
    shutil.rmtree(folder)


def pg_folder(home: Path, template: Path) -> Path:
    subprocess.run(["cp", "-a", template, home / "pg"], check=True, timeout=60)
    return home / "pg"


def postgres_agent(folder: Path, port: int, **keys: Any) -> dict[str, Any]:
    """PostgreSQL as docs/recipes.md runs it: in the foreground, its sockets in `folder`."""
    assert PG is not None
    command = [str(PG / "postgres"), "-D", str(folder / "data"), "-k", str(folder)]
    command += ["-p", str(port), "-c", "listen_addresses=127.0.0.1"]
    return {"command": command, "cwd": str(folder), "ready": "notify", **keys}


def psql(port: int) -> str:
    """`select 1` through a real client; its output ("1") or what failed."""
    assert PG is not None
    done = subprocess.run(
        [PG / "psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-tAc", "select 1"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PGCONNECT_TIMEOUT": "10"},
    )
    return done.stdout.strip() if done.returncode == 0 else f"psql failed: {done.stderr}"


def redis_ping(port: int) -> bool:
    """A RESP PING over a socket: answered +PONG."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            return s.recv(64) == b"+PONG\r\n"
    except OSError:
        return False


def running_in(folder: Path) -> list[int]:
    """Live processes whose working folder is `folder` or below: a program's processes."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        if (cwd == str(folder) or cwd.startswith(f"{folder}/")) and alive(int(proc.name)):
            found.append(int(proc.name))
    return found


def state_is(sock: Path, agent_id: str, state: str, timeout: float = UP) -> dict[str, Any]:
    return wait_until(
        lambda: (a := agent(sock, agent_id))["state"] == state and a,
        timeout,
        f"{agent_id} {state}",
    )


def restarts_after_sigkill(sock: Path, agent_id: str, folder: Path) -> dict[str, Any]:
    """SIGKILL the main pid: all its processes are gone (PostgreSQL's left its group with
    setsid), a new run is ready, counted as a restart."""
    before = agent(sock, agent_id)
    family = running_in(folder)
    assert before["pid"] in family
    os.kill(before["pid"], signal.SIGKILL)
    after = wait_until(
        lambda: (
            (a := agent(sock, agent_id))["state"] == "running" and a["pid"] != before["pid"] and a
        ),
        UP,
        f"{agent_id} running again after SIGKILL",
    )
    assert after["restarts"] == before["restarts"] + 1
    assert after["last_exit"]["signal"] == "SIGKILL"
    assert [pid for pid in family if alive(pid)] == []
    return after


def stops_cleanly(sup: SupervisorProcess, sock: Path, agent_id: str, folder: Path) -> None:
    """`supervisor stop ID`: stopped by its stop signal (no SIGKILL), nothing of it left."""
    ran = run_cli("stop", agent_id, "--api", f"unix:{sock}")
    assert ran.returncode == 0, ran
    stopped = state_is(sock, agent_id, "stopped")
    assert stopped["pid"] is None
    last = stopped["last_exit"]
    assert last["stopped"] is True, last
    assert "killed" not in last, last
    assert last.get("code") == 0, last
    sup.wait_log(f"{agent_id}: stopped (stopped on request)")
    assert running_in(folder) == []


def sigterm_ends_everything(sup: SupervisorProcess, *folders: Path) -> None:
    sup.signal(signal.SIGTERM)
    assert sup.wait_exit(timeout=UP) == 0, sup.output()
    for folder in folders:
        assert running_in(folder) == [], sup.output()
    assert "SIGKILL after stop_timeout" not in sup.output()
    assert "Traceback" not in sup.output()


@needs_redis
def test_redis_supervised_systemd(tmp_path: Path, home: Path) -> None:
    assert REDIS is not None
    user = "redis" if any(p.pw_name == "redis" for p in pwd.getpwall()) else "nobody"
    folder = owned_folder(home / "redis", user)
    port = free_port()
    command = [str(REDIS), "--supervised", "systemd", "--port", str(port)]
    command += ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(folder)]
    redis = {"command": command, "user": user, "cwd": str(folder), "ready": "notify"}
    write(tmp_path / "agents.toml", {"redis": redis})
    sock = home / "api.sock"
    with start_supervisor(tmp_path, sock) as sup:
        up = state_is(sock, "redis", "running")
        assert redis_ping(port), sup.output()  # at once, no retry: running means it serves
        assert up["status"] == "Ready to accept connections"  # its own STATUS=
        assert up["restarts"] == 0
        assert running_in(folder) == [up["pid"]]
        assert pwd.getpwuid(Path(f"/proc/{up['pid']}").stat().st_uid).pw_name == user

        restarts_after_sigkill(sock, "redis", folder)
        assert redis_ping(port), sup.output()

        stops_cleanly(sup, sock, "redis", folder)
        assert not redis_ping(port)

        assert run_cli("start", "redis", "--api", f"unix:{sock}").returncode == 0
        state_is(sock, "redis", "running")
        assert redis_ping(port)
        sigterm_ends_everything(sup, folder)


@needs_postgres
@needs_postgres_user
def test_postgres_as_user_postgres(tmp_path: Path, home: Path, pg_template: Path) -> None:
    folder = pg_folder(home, pg_template)
    port = free_port()
    pg = postgres_agent(folder, port, user="postgres", stop_signal="SIGINT")
    write(tmp_path / "agents.toml", {"pg": pg})
    sock = home / "api.sock"
    with start_supervisor(tmp_path, sock) as sup:
        up = state_is(sock, "pg", "running")
        assert psql(port) == "1"  # at once, no retry: running means it serves
        assert up["restarts"] == 0
        assert up["pid"] in running_in(folder)
        assert len(running_in(folder)) >= 3  # its checkpointer, writers... (each setsid)
        assert Path(f"/proc/{up['pid']}").stat().st_uid == pwd.getpwnam("postgres").pw_uid

        restarts_after_sigkill(sock, "pg", folder)  # its old children gone, or it would not start
        assert psql(port) == "1"

        stops_cleanly(sup, sock, "pg", folder)
        sup.wait_log("database system is shut down")
        assert psql(port).startswith("psql failed")

        # Shut down cleanly: the next start needs no recovery.
        assert run_cli("start", "pg", "--api", f"unix:{sock}").returncode == 0
        state_is(sock, "pg", "running")

        def since_stop() -> str:
            return sup.output().rpartition("pg: stopped")[2]

        wait_until(lambda: "database system was shut down at" in since_stop(), UP, "no recovery")
        assert "not properly shut down" not in since_stop()
        assert psql(port) == "1"
        sigterm_ends_everything(sup, folder)
        assert sup.output().count("database system is shut down") == 2, sup.output()


@needs_postgres
@needs_postgres_user
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")
def test_postgres_dropping_privileges_itself(tmp_path: Path, home: Path, pg_template: Path) -> None:
    """No `user` key: the agent runs as root and `setpriv` drops to postgres, then notifies.
    Containment by ancestry here (the other tests get cgroups where they may)."""
    folder = pg_folder(home, pg_template)
    port = free_port()
    pg = postgres_agent(folder, port)
    drop = ["setpriv", "--reuid=postgres", "--regid=postgres", "--clear-groups"]
    pg["command"] = drop + pg["command"]
    write(tmp_path / "agents.toml", {"pg": pg})
    sock = home / "api.sock"
    env = {"SUPERVISOR_CONTAINMENT": "ancestry"}
    with start_supervisor(tmp_path, sock, env=env) as sup:
        up = state_is(sock, "pg", "running")
        assert psql(port) == "1"
        assert Path(f"/proc/{up['pid']}").stat().st_uid == pwd.getpwnam("postgres").pw_uid
        restarts_after_sigkill(sock, "pg", folder)
        assert psql(port) == "1"
        sigterm_ends_everything(sup, folder)  # SIGTERM: PostgreSQL's smart shutdown
        assert "database system is shut down" in sup.output()
