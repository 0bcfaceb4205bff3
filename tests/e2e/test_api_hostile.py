"""A real `supervisor run` with a default-style API (TCP on loopback, no token set) against
another local user, a connection flood under a low descriptor limit, and a web page in
real headless Chromium (docs/api.md#who-may-do-what)."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ..harness import SupervisorProcess, wait_until

pytestmark = pytest.mark.slow

SETPRIV = shutil.which("setpriv")
PRLIMIT = shutil.which("prlimit")
CHROMIUM = shutil.which("chromium")
SYSTEM_PYTHON = "/usr/bin/python3"
PACKAGE = Path(__file__).resolve().parents[2]  # the folder holding `supervisor/`


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ask(port: int, method: str, path: str, body: object = None, **headers: str) -> int:
    """One request as this process's user; the status."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        data = None if body is None else json.dumps(body).encode()
        if data is not None:
            headers.setdefault("Content-Type", "application/json")
        conn.request(method, path, body=data, headers=headers)
        return conn.getresponse().status
    finally:
        conn.close()


def start(tmp_path: Path, manifest: str, *prefix: str) -> tuple[SupervisorProcess, int]:
    path = tmp_path / "agents.toml"
    path.write_text(manifest)
    port = free_port()
    sup = SupervisorProcess(path, "--api", f"127.0.0.1:{port}", prefix=prefix)
    sup.wait_log("API on 127.0.0.1:")
    return sup, port


def as_nobody() -> list[str]:
    return [SETPRIV, "--reuid=65534", "--regid=65534", "--clear-groups"]  # type: ignore[list-item]


def nobody_can_read_the_package() -> bool:
    if SETPRIV is None or os.geteuid() != 0 or not os.path.exists(SYSTEM_PYTHON):
        return False
    code = f"import sys; sys.path.insert(0, {str(PACKAGE)!r}); import supervisor.cli.client"
    return subprocess.run([*as_nobody(), SYSTEM_PYTHON, "-c", code], check=False).returncode == 0


@pytest.mark.skipif(
    not nobody_can_read_the_package(),
    reason="needs root, setpriv, /usr/bin/python3 and a checkout uid 65534 can read",
)
def test_another_user_cannot_drive_a_default_api(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    manifest = '[agents.web]\ncommand = ["sleep", "100000"]\n'
    sup, port = start(tmp_path, manifest)
    with sup:
        api = f"127.0.0.1:{port}"
        # The supervisor's own user: no extra step.
        env = {k: v for k, v in os.environ.items() if k != "SUPERVISOR_TOKEN"}
        own = subprocess.run(
            [sys.executable, "-m", "supervisor", "status", "--api", api],
            capture_output=True, text=True, env=env, timeout=30, check=False,
        )  # fmt: skip
        assert own.returncode == 0, own.stderr
        # Another uid: the CLI is refused, and so is a hand-made request.
        nobody_env = {"PYTHONPATH": str(PACKAGE), "HOME": "/nonexistent", "PATH": "/usr/bin:/bin"}
        for command in (["stop", "web"], ["status"], ["reload"]):
            ran = subprocess.run(
                [*as_nobody(), SYSTEM_PYTHON, "-m", "supervisor", *command, "--api", api],
                capture_output=True, text=True, env=nobody_env, timeout=30, check=False,
            )  # fmt: skip
            assert ran.returncode == 2, (command, ran.stdout, ran.stderr)
            assert "refused" in ran.stderr, ran.stderr
        load = {"id": "evil", "command": ["touch", str(marker)]}
        request = (
            "import http.client, json, sys; c = http.client.HTTPConnection('127.0.0.1', "
            f"{port}); c.request('POST', '/agents', body=json.dumps({load!r}), "
            "headers={'Content-Type': 'application/json'}); print(c.getresponse().status)"
        )
        ran = subprocess.run(
            [*as_nobody(), SYSTEM_PYTHON, "-c", request],
            capture_output=True, text=True, env=nobody_env, timeout=30, check=False,
        )  # fmt: skip
        assert ran.stdout.strip() == "401", ran.stderr
        assert not marker.exists()
        assert "running" in own.stdout
        sup.signal(signal.SIGTERM)
        assert sup.wait_exit() == 0


@pytest.mark.skipif(PRLIMIT is None, reason="needs prlimit (util-linux)")
def test_a_connection_flood_under_a_low_fd_limit_harms_no_agent(tmp_path: Path) -> None:
    manifest = """
[agents.flaky]
command = ["sh", "-c", "sleep 0.1; exit 1"]
critical = true
max_restarts = 3
restart_window = 60
backoff = {initial = 0.05, max = 0.05}
reset_after = 0.05
"""
    sup, port = start(tmp_path, manifest, PRLIMIT, "--nofile=64:64")  # type: ignore[arg-type]
    held: list[socket.socket] = []
    stop = threading.Event()

    def flood() -> None:
        while not stop.is_set():
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=2)
                s.sendall(b"GET /healthz HTTP/1.1\r\n")  # a head that never ends
                held.append(s)
            except OSError:
                pass
            if len(held) > 300:
                for s in held[:100]:
                    s.close()
                del held[:100]

    with sup:
        flooder = threading.Thread(target=flood)
        flooder.start()
        try:
            # The critical agent keeps restarting through the flood; its budget is spent by
            # its own exits only if every start works (each run lasts past reset_after).
            wait_until(lambda: sup.output().count("flaky: running") >= 15, timeout=60,
                       what="15 starts of flaky during the flood")  # fmt: skip
            assert sup.proc.poll() is None, sup.output()
        finally:
            stop.set()
            flooder.join()
            for s in held:
                s.close()
        wait_until(lambda: _healthy(port), timeout=30, what="the API after the flood")
        assert "too many open files" not in sup.output()
        sup.signal(signal.SIGTERM)
        assert sup.wait_exit() == 0


PAGE = """<!doctype html><script>
fetch("http://127.0.0.1:%d/agents", {method: "POST", mode: "no-cors",
  headers: {"Content-Type": "text/plain"}, body: %s})
  .then(() => { document.title = "sent"; }, () => { document.title = "sent"; });
</script>"""


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_a_page_in_chromium_cannot_load_an_agent(tmp_path: Path) -> None:
    playwright = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip)")
    marker = tmp_path / "ran"
    sup, port = start(tmp_path, '[agents.web]\ncommand = ["sleep", "100000"]\n')
    site = tmp_path / "site"
    site.mkdir()
    load = json.dumps(json.dumps({"id": "evil", "command": ["touch", str(marker)]}))
    (site / "index.html").write_text(PAGE % (port, load))
    page_port = free_port()
    web = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(page_port), "--bind", "127.0.0.1"],
        cwd=site, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
    try:
        with sup, playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=args)
            try:
                page = browser.new_page()
                wait_until(lambda: _serves(page_port), what="the page's server")
                page.goto(f"http://127.0.0.1:{page_port}/index.html")
                page.wait_for_function("document.title === 'sent'", timeout=20_000)
            finally:
                browser.close()
            assert not marker.exists()
            assert "evil" not in sup.output()
            sup.signal(signal.SIGTERM)
            assert sup.wait_exit() == 0
    finally:
        web.kill()
        web.wait()


def _healthy(port: int) -> bool:
    try:
        return ask(port, "GET", "/healthz") == 200
    except OSError:
        return False


def _serves(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False
