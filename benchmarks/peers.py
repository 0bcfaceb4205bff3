"""The supervisors under test: ours, supervisord and pm2, behind one small interface.

Each peer writes an equivalent configuration for the same agents (``{id: sleep argument}``),
launches, names its supervisor process(es) (`roots`) and any helper processes of its own
(`helpers`), stops on SIGTERM and, where it can, reloads an edited configuration.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import procfs

from supervisor.api.tokenfile import read_token

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
WORK = BENCH / ".work"
SLEEP = shutil.which("sleep") or "/bin/sleep"


class Unavailable(Exception):
    """This peer cannot run here; the message says why."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except FileNotFoundError:
        return ""
    return "\n".join(text[-lines:])


def request(
    port: int, method: str, path: str, body: Any = None, timeout: float = 60.0
) -> tuple[int, Any]:
    """One request to 127.0.0.1:`port`; returns (status, parsed JSON or text)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        token = read_token(port)  # the one our supervisor made for this user (docs/api.md)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        conn.request(method, path, body=payload, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    try:
        return resp.status, json.loads(data)
    except ValueError:
        return resp.status, data.decode(errors="replace")


class Peer:
    """One supervisor in one working folder; `launch` to `shutdown` is one session."""

    name = "peer"
    can_reload = False

    def __init__(self) -> None:
        self.dir = WORK
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = WORK / f"{self.name}.log"
        self.note = ""

    # -- lifecycle, overridden per peer --------------------------------------------------
    def setup(self) -> None:
        """Install whatever is needed (idempotent); raise `Unavailable` if it cannot."""

    def write(self, agents: dict[str, str]) -> None:
        raise NotImplementedError

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def roots(self) -> list[int]:
        return [self.proc.pid] if self.proc else []

    def reload(self, agents: dict[str, str]) -> dict[str, Any]:
        raise NotImplementedError

    def cli(self, action: str, agent_id: str) -> list[str] | None:
        """The command line a user types for `action` ("status", "start", "stop", "logs")
        on `agent_id`, or None if this peer has no such command."""
        return None

    # -- shared ----------------------------------------------------------------------------
    def prepare(self, label: str, agents: dict[str, str]) -> None:
        self.dir = WORK / f"{self.name}-{label}"
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)
        self.log = self.dir / "output.log"
        self.write(agents)

    def launch(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.command(),
                cwd=self.dir,
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches only us; we clean up ourselves
            )

    def failed(self) -> str | None:
        """Why the supervisor is gone before it should be, or None while it runs."""
        if self.proc is not None and self.proc.poll() is not None:
            return f"exited with {self.proc.returncode}: {tail(self.log)}"
        return None

    def helpers(self) -> list[int]:
        """The supervisor's own non-agent processes (children that are not `sleep`)."""
        out: list[int] = []
        for root in self.roots():
            for pid in procfs.children(root):
                if procfs.alive(pid) and procfs.sleep_arg(pid) is None:
                    out.append(pid)
                    out.extend(procfs.descendants(pid))
        return out

    def terminate(self) -> None:
        for pid in self.roots():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def exited(self) -> bool:
        roots = self.roots()
        if self.proc is not None:
            self.proc.poll()
        return all(not procfs.alive(pid) for pid in roots)

    def kill(self) -> None:
        """SIGKILL the supervisor and everything below it; reap what is ours."""
        roots = [p for p in self.roots() if procfs.stat(p) is not None]
        below = [p for r in roots for p in procfs.descendants(r)]
        for pid in [*roots, *below]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
        procfs.wait_gone(below, timeout=5)
        procfs.reap([*roots, *below])
        self.proc = None


def _toml_str(s: str) -> str:
    return json.dumps(s)


class Ours(Peer):
    """`python -m supervisor run MANIFEST` with the project's venv."""

    name = "ours"
    can_reload = True

    def __init__(self, python: str, backoff_initial: float | None, rev: str = "") -> None:
        super().__init__()
        self.python = os.path.abspath(python)
        self.backoff_initial = backoff_initial
        self.rev = rev
        self.src = REPO
        self.port = 0
        self.manifest = WORK / "agents.toml"
        self.last_reload: Any = None
        self._has_logs: bool | None = None

    def setup(self) -> None:
        if not Path(self.python).exists():
            raise Unavailable(f"{self.python} not found (run `just setup`)")
        if self.rev:
            self.src = self.export(self.rev)
        self.python = self.installed_python()
        # Byte-compile it, as installing a package does (pip writes the .pyc files): with
        # PYTHONDONTWRITEBYTECODE set, or in a fresh export, every launch would otherwise
        # compile the whole package again (~0.1 s of each start and CLI command).
        subprocess.run(
            [self.python, "-m", "compileall", "-q", str(self.src / "supervisor")],
            capture_output=True,
            timeout=120,
        )
        probe = subprocess.run(
            [self.python, "-c", "import supervisor.slot"],
            cwd=self.src,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        if probe.returncode != 0:
            last = (probe.stderr.strip().splitlines() or ["?"])[-1]
            raise Unavailable(f"`import supervisor.slot` failed: {last}")

    def installed_python(self) -> str:
        """A Python that sees the project's dependencies as an installed package does.

        The project's `.venv` holds it as an *editable* install, whose import hook (a
        `.pth` file that loads pathlib, re and urllib at every interpreter start) costs
        ~30 ms of each launch that no installed package pays. This venv has none of it:
        one `.pth` line puts the `.venv`'s site-packages on the path (its `.pth` files are
        not run), and PYTHONPATH points to the package (`env`).
        """
        venv = WORK / "venv-ours"
        purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
        deps = subprocess.run(
            [self.python, "-c", purelib], capture_output=True, text=True, check=True
        ).stdout.strip()
        python = venv / "bin" / "python"
        if not python.exists():
            subprocess.run(
                [self.python, "-m", "venv", "--without-pip", str(venv)],
                capture_output=True,
                check=True,
            )
        site = subprocess.run(
            [str(python), "-c", purelib], capture_output=True, text=True, check=True
        ).stdout.strip()
        Path(site, "project-deps.pth").write_text(deps + "\n")
        return str(python)

    def export(self, rev: str) -> Path:
        """A copy of the package as of git `rev`, so edits in progress do not disturb a run."""
        out = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", rev],
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            raise Unavailable(f"unknown revision {rev!r}: {out.stderr.strip()}")
        dest = WORK / f"src-{out.stdout.strip()}"
        if not (dest / "supervisor").is_dir():
            dest.mkdir(parents=True, exist_ok=True)
            archive = subprocess.run(
                ["git", "-C", str(REPO), "archive", rev, "supervisor"],
                capture_output=True,
                check=True,
            )
            subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
        return dest

    def header(self) -> str:
        lines = [
            "[supervisor]",
            f'api = "127.0.0.1:{self.port}"',
            "shutdown_timeout = 30.0",
            "",
        ]
        return "\n".join(lines) + "\n"

    def write(self, agents: dict[str, str]) -> None:
        if not self.port:
            self.port = free_port()
        self.manifest = self.dir / "agents.toml"
        parts = [self.header(), "[defaults]\n", 'restart = "always"\n']
        if self.backoff_initial is not None:
            # supervisord restarts an agent that was running at once; say the same here
            parts.append(f"backoff = {{ initial = {self.backoff_initial} }}\n")
            parts.append("max_restarts = 1000\n")
        parts.append("\n")
        for aid, arg in agents.items():
            parts.append(f'[agents.{aid}]\ncommand = ["sleep", "{arg}"]\n')
        self.manifest.write_text("".join(parts))

    def write_inprocess(self, count: int, changed: set[int], module: str) -> None:
        """A manifest of `count` in-process agents; those in `changed` get other params."""
        if not self.port:
            self.port = free_port()
        self.manifest = self.dir / "agents.toml"
        parts = [self.header()]
        for i in range(count):
            gen = 1 if i in changed else 0
            parts.append(f'[agents.a{i}]\nentry = "{module}:main"\nparams = {{ gen = {gen} }}\n')
        self.manifest.write_text("".join(parts))

    def command(self) -> list[str]:
        return [
            self.python,
            "-m",
            "supervisor",
            "run",
            str(self.manifest),
            "--api",
            f"127.0.0.1:{self.port}",
            "--log-level",
            "WARNING",
        ]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("SUPERVISOR_TOKEN", None)
        # `-m supervisor` is this checkout (or its export at --ours-rev), not supervisord
        env["PYTHONPATH"] = str(self.src)
        return env

    def prepare(self, label: str, agents: dict[str, str]) -> None:
        self.port = free_port()
        super().prepare(label, agents)

    def cli(self, action: str, agent_id: str) -> list[str] | None:
        base = [self.python, "-m", "supervisor"]
        api = ["--api", f"127.0.0.1:{self.port}"]
        if action == "status":
            return [*base, "status", *api]
        if action in ("start", "stop"):
            return [*base, action, *api, agent_id]
        if action == "logs" and self.has_logs_command():
            return [*base, "logs", *api, agent_id]
        return None

    def has_logs_command(self) -> bool:
        """Whether this revision has `supervisor logs` (it came with the observe work)."""
        if self._has_logs is None:
            probe = subprocess.run(
                [self.python, "-m", "supervisor", "logs", "--help"],
                cwd=self.src,
                env=self.env(),
                capture_output=True,
                timeout=60,
            )
            self._has_logs = probe.returncode == 0
        return self._has_logs

    def reload(self, agents: dict[str, str]) -> dict[str, Any]:
        self.write(agents)
        try:
            status, body = request(self.port, "POST", "/reload", timeout=120)
        except OSError as e:
            # no API yet: fall back to SIGHUP; convergence is then seen in /proc only
            self.last_reload = f"POST /reload failed ({e}); sent SIGHUP"
            os.kill(self.roots()[0], signal.SIGHUP)
            return {"via": "SIGHUP"}
        if status == 404:
            os.kill(self.roots()[0], signal.SIGHUP)
            return {"via": "SIGHUP", "status": status}
        if status != 200:
            raise RuntimeError(f"POST /reload answered {status}: {str(body)[:300]}")
        self.last_reload = body
        return {"via": "POST /reload", "status": status, "body": summarize_reload(body)}


def summarize_reload(body: Any) -> dict[str, Any]:
    """Counts of the lists in a POST /reload answer (the lists themselves can be long)."""
    if not isinstance(body, dict):
        return {"raw": str(body)[:200]}
    return {k: (len(v) if isinstance(v, list | dict) else v) for k, v in body.items()}


class Supervisord(Peer):
    """supervisord 4.x in a virtual environment of its own (its PyPI name is `supervisor`)."""

    name = "supervisord"
    can_reload = True
    venv = BENCH / ".venv-supervisord"

    def setup(self) -> None:
        bin_ = self.venv / "bin"
        if (bin_ / "supervisord").exists() and (bin_ / "supervisorctl").exists():
            return
        try:
            subprocess.run(
                [sys.executable, "-m", "venv", "--clear", str(self.venv)],
                check=True,
                capture_output=True,
                timeout=120,
            )
            subprocess.run(
                [str(bin_ / "python"), "-m", "pip", "install", "-q", "supervisor>=4.2"],
                check=True,
                capture_output=True,
                timeout=300,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
            err = getattr(e, "stderr", b"") or b""
            raise Unavailable(f"could not install supervisord: {err.decode()[-300:]}")

    def version(self) -> str:
        out = subprocess.run(
            [str(self.venv / "bin" / "supervisord"), "--version"], capture_output=True, text=True
        )
        return out.stdout.strip()

    def write(self, agents: dict[str, str]) -> None:
        d = self.dir
        self.conf = d / "supervisord.conf"
        lines = [
            "[unix_http_server]",
            f"file={d}/supervisor.sock",
            "",
            "[supervisord]",
            "nodaemon=true",
            f"logfile={d}/supervisord.log",
            f"pidfile={d}/supervisord.pid",
            f"childlogdir={d}",
            "loglevel=warn",
            "minfds=4096",
            "",
            "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
            "",
            "[supervisorctl]",
            f"serverurl=unix://{d}/supervisor.sock",
            "",
        ]
        for aid, arg in agents.items():
            lines += [
                f"[program:{aid}]",
                f"command={SLEEP} {arg}",
                "startsecs=0",
                "autorestart=true",
                "",
            ]
        self.conf.write_text("\n".join(lines))

    def command(self) -> list[str]:
        return [str(self.venv / "bin" / "supervisord"), "-n", "-c", str(self.conf)]

    def cli(self, action: str, agent_id: str) -> list[str] | None:
        ctl = [str(self.venv / "bin" / "supervisorctl"), "-c", str(self.conf)]
        if action == "status":
            return [*ctl, "status"]
        if action in ("start", "stop"):
            return [*ctl, action, agent_id]
        if action == "logs":
            return [*ctl, "tail", agent_id]
        return None

    def ctl(self, *args: str) -> str:
        out = subprocess.run(
            [str(self.venv / "bin" / "supervisorctl"), "-c", str(self.conf), *args],
            capture_output=True,
            text=True,
            timeout=600,
        )
        return out.stdout

    def reload(self, agents: dict[str, str]) -> dict[str, Any]:
        self.write(agents)
        reread = self.ctl("reread")
        update = self.ctl("update")
        return {
            "via": "supervisorctl reread + update",
            "reread_lines": len(reread.splitlines()),
            "update_lines": len(update.splitlines()),
        }


class Pm2(Peer):
    """pm2 (npm) with its own PM2_HOME per session; its daemon re-parents to us."""

    name = "pm2"
    prefix = WORK / "pm2"

    @property
    def bin(self) -> Path:
        return self.prefix / "node_modules" / ".bin" / "pm2"

    def setup(self) -> None:
        if self.bin.exists():
            return
        npm = shutil.which("npm")
        if not npm or not shutil.which("node"):
            raise Unavailable("node/npm not found")
        self.prefix.mkdir(parents=True, exist_ok=True)
        try:
            subprocess.run(
                [npm, "install", "--no-audit", "--no-fund", "--prefix", str(self.prefix), "pm2"],
                check=True,
                capture_output=True,
                timeout=300,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
            err = getattr(e, "stderr", b"") or b""
            raise Unavailable(f"npm install pm2 failed: {err.decode()[-300:]}")
        if not self.bin.exists():
            raise Unavailable("npm install pm2 left no pm2 binary")

    def version(self) -> str:
        # not `pm2 --version`: that starts a daemon
        pkg = self.prefix / "node_modules" / "pm2" / "package.json"
        return str(json.loads(pkg.read_text()).get("version", "?"))

    def prepare(self, label: str, agents: dict[str, str]) -> None:
        self._daemon: int | None = None
        super().prepare(label, agents)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PM2_HOME"] = str(self.dir / "home")
        return env

    def write(self, agents: dict[str, str]) -> None:
        apps = [
            {
                "name": aid,
                "script": SLEEP,
                "args": [arg],
                "interpreter": "none",
                "autorestart": True,
            }
            for aid, arg in agents.items()
        ]
        self.eco = self.dir / "ecosystem.json"
        self.eco.write_text(json.dumps({"apps": apps}))

    def command(self) -> list[str]:
        return [str(self.bin), "start", str(self.eco)]

    def daemon(self) -> int | None:
        try:
            pid = int((self.dir / "home" / "pm2.pid").read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid

    def roots(self) -> list[int]:
        # remembered: the daemon deletes its pid file before it is done stopping
        if getattr(self, "_daemon", None) is None:
            pid = self.daemon()
            if pid is not None and procfs.stat(pid) is not None:
                self._daemon = pid
        return [self._daemon] if self._daemon is not None else []

    def failed(self) -> str | None:
        # the CLI exits once it has handed the apps to the daemon; only a bad exit matters
        if self.proc is not None and self.proc.poll() not in (None, 0):
            return f"pm2 start exited with {self.proc.returncode}: {tail(self.log)}"
        return None

    def exited(self) -> bool:
        roots = self.roots()
        gone = all(not procfs.alive(pid) for pid in roots)
        if gone:
            procfs.reap(roots)
        return gone


class Minimal(Peer):
    """benchmarks/respawn.py: spawn, wait, respawn; the floor a real supervisor builds on."""

    name = "minimal"

    def write(self, agents: dict[str, str]) -> None:
        self.args_file = self.dir / "args.txt"
        self.args_file.write_text("\n".join(agents.values()) + "\n")

    def command(self) -> list[str]:
        return [sys.executable, "-I", "-S", str(BENCH / "respawn.py"), str(self.args_file)]


def wait_until(pred: Any, timeout: float, interval: float = 0.001) -> float:
    """Poll `pred()` until true; the seconds it took. Raises TimeoutError."""
    start = time.perf_counter()
    while True:
        if pred():
            return time.perf_counter() - start
        if time.perf_counter() - start > timeout:
            raise TimeoutError(f"not within {timeout:.0f} s")
        time.sleep(interval)
