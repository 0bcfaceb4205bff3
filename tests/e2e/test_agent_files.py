"""Hostile files in agent folders and manifests, against the real CLI and `supervisor run`.

A FIFO, a device, a huge file, a path too long, a folder another user may not enter:
each is a located error (`supervisor check` exits 2, `POST /agents` answers 422, a
reload answers and logs), never a hang, a traceback or a whole file in memory
(docs/manifest.md, "Limits").
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from supervisor.manifest.folder import MAX_FOLDER_BYTES

from ..harness import SupervisorProcess, wait_until

pytestmark = pytest.mark.slow

AGENT_PY = "import trio\n\nasync def main(ctx):\n    await trio.sleep_forever()\n"
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def folder_agent(tmp_path: Path, name: str = "ag") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "agent.py").write_text(AGENT_PY)
    (tmp_path / "agents.toml").write_text(f'[agents.a]\npath = "{name}"\n')
    return folder


def check(manifest: Path, prefix: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    """`supervisor check MANIFEST`; a hang fails the test (TimeoutExpired)."""
    return subprocess.run(
        [*(prefix or []), sys.executable, "-m", "supervisor", "check", manifest.name],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=manifest.parent,
    )


def assert_refused(done: subprocess.CompletedProcess[str], *lines: str) -> None:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    for line in lines:
        assert line in done.stderr.splitlines(), done.stderr


def test_check_refuses_a_fifo_in_a_folder_without_opening_it(tmp_path: Path) -> None:
    folder = folder_agent(tmp_path)
    (folder / "sub").mkdir()
    os.mkfifo(folder / "sub" / "pipe")
    assert_refused(
        check(tmp_path / "agents.toml"),
        'agents.toml: agents.a.path: "ag": "sub/pipe" is a FIFO: an agent folder may hold only'
        " regular files and folders (move it out of the folder)",
    )


def test_check_refuses_a_symlink_to_dev_zero(tmp_path: Path) -> None:
    folder = folder_agent(tmp_path)
    (folder / "zero").symlink_to("/dev/zero")
    done = check(tmp_path / "agents.toml")
    assert_refused(done)
    assert '"ag": "zero" is a character device' in done.stderr


def test_an_agent_toml_that_is_a_fifo_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "ag"
    folder.mkdir()
    os.mkfifo(folder / "agent.toml")
    (tmp_path / "agents.toml").write_text('[agents.a]\npath = "ag"\n')
    done = check(tmp_path / "agents.toml")
    assert_refused(done)
    assert "is a FIFO" in done.stderr


def test_an_included_fifo_and_a_fifo_manifest_are_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "more.toml")
    (tmp_path / "agents.toml").write_text('[supervisor]\ninclude = ["more.toml"]\n')
    assert_refused(
        check(tmp_path / "agents.toml"),
        "more.toml: is a FIFO, not a regular file; only regular files are read",
    )
    assert_refused(check(tmp_path / "more.toml"))


def _peak_rss_of_load(manifest: Path) -> tuple[int, str]:
    """Load `manifest` in a fresh interpreter: (its peak RSS in KiB, what load said).

    The peak is /proc's VmHWM, which starts afresh at exec (`ru_maxrss` would count the
    forking test process's own).
    """
    code = (
        "import re, sys\n"
        "from supervisor import manifest as mf\n"
        "try:\n    mf.load(mf.Path(sys.argv[1])); said = 'ok'\n"
        "except mf.ManifestError as e:\n    said = str(e)\n"
        "status = open('/proc/self/status').read()\n"
        "print(re.search(r'VmHWM:\\s+(\\d+) kB', status)[1]); print(said)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(manifest)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    peak, said = done.stdout.split("\n", 1)
    return int(peak), said.strip()


def test_files_are_digested_in_chunks_not_read_whole(tmp_path: Path) -> None:
    """A 60 MiB file (under the limit) costs a chunk of memory, not 60 MiB."""
    (tmp_path / "small").mkdir()
    (tmp_path / "big").mkdir()
    folder_agent(tmp_path / "small")
    baseline, said = _peak_rss_of_load(tmp_path / "small" / "agents.toml")
    assert said == "ok"
    big = folder_agent(tmp_path / "big")
    with (big / "data.bin").open("wb") as f:
        f.truncate(60 * 1024 * 1024)  # sparse: quick to make, 60 MiB to read
    peak, said = _peak_rss_of_load(big.parent / "agents.toml")
    assert said == "ok"
    assert peak - baseline < 20 * 1024, (baseline, peak)


def test_a_folder_over_the_size_limit_is_refused_without_reading(tmp_path: Path) -> None:
    folder = folder_agent(tmp_path)
    with (folder / "huge.bin").open("wb") as f:
        f.truncate(1200 * 1024 * 1024)  # sparse 1.2 GB
    peak, said = _peak_rss_of_load(tmp_path / "agents.toml")
    assert said == (
        f'{tmp_path / "agents.toml"}: agents.a.path: "ag" holds more than'
        f' {MAX_FOLDER_BYTES >> 20} MiB of files (the limit was passed at "huge.bin");'
        " keep data, environments and dependencies outside the folder"
    )
    assert peak < 200 * 1024


# --- OSError: located, exit 2 ----------------------------------------------------------


def test_a_path_too_long_is_a_located_error(tmp_path: Path) -> None:
    (tmp_path / "agents.toml").write_text(f'[agents.a]\npath = "{"x" * 300}"\n')
    done = check(tmp_path / "agents.toml")
    assert_refused(done)
    assert "agents.toml: agents.a.path: " in done.stderr
    assert "cannot read: File name too long" in done.stderr


def test_a_path_through_a_file_and_a_symlink_loop_are_located_errors(tmp_path: Path) -> None:
    (tmp_path / "loop").symlink_to("loop")
    (tmp_path / "agents.toml").write_text(
        '[agents.a]\npath = "agents.toml/x"\n[agents.b]\npath = "loop"\n'
    )
    assert_refused(
        check(tmp_path / "agents.toml"),
        'agents.toml: agents.a.path: "agents.toml/x": cannot read: Not a directory',
        'agents.toml: agents.b.path: "loop": cannot read: too many levels of symbolic links'
        " (a symlink loop?)",
    )


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A folder another uid (nobody) can reach: pytest's tmp_path is root's 0700."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is needed to run a check as another user")
    if os.geteuid() != 0:
        pytest.skip("only root can run a check as another user")
    probe = subprocess.run(
        [*NOBODY, sys.executable, "-c", "import supervisor"], capture_output=True, text=True
    )
    if probe.returncode != 0:  # e.g. a checkout under a folder only root may enter
        pytest.skip(f"nobody cannot import this checkout: {probe.stderr.strip()[-200:]}")
    folder = Path(tempfile.mkdtemp(prefix="sv-files-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder)


def test_folders_and_includes_another_user_may_not_read(shared_tmp: Path) -> None:
    folder = folder_agent(shared_tmp)
    folder.chmod(0o700)
    (shared_tmp / "secret.toml").write_text("")
    (shared_tmp / "secret.toml").chmod(0o600)
    manifest = shared_tmp / "agents.toml"
    manifest.write_text(
        '[supervisor]\ninclude = ["secret.toml"]\n[agents.a]\npath = "ag"\n', encoding="utf-8"
    )
    manifest.chmod(0o644)
    assert_refused(
        check(manifest, NOBODY),
        'agents.toml: agents.a.path: "ag": cannot read: Permission denied',
        "secret.toml: cannot read: Permission denied",
    )
    manifest.chmod(0o600)
    assert_refused(check(manifest, NOBODY), "agents.toml: cannot read: Permission denied")


# --- A running supervisor: reloads and loads answer, and it still stops --------------


@pytest.fixture
def sock() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="sv-api-"))
    yield folder / "api.sock"
    shutil.rmtree(folder)


def request(sock: Path, method: str, path: str, **kw: Any) -> httpx.Response:
    transport = httpx.HTTPTransport(uds=str(sock))
    with httpx.Client(base_url="http://api", transport=transport, timeout=30) as client:
        return client.request(method, path, **kw)


def test_a_running_supervisor_refuses_hostile_folders_and_still_answers(
    tmp_path: Path, sock: Path
) -> None:
    folder = folder_agent(tmp_path)
    with SupervisorProcess(tmp_path / "agents.toml", "--api", f"unix:{sock}") as sup:
        wait_until(sock.exists, what="the API's socket")
        wait_until(lambda: request(sock, "GET", "/agents/a").json()["state"] == "running")
        os.mkfifo(folder / "pipe")
        sup.signal(signal.SIGHUP)
        sup.wait_log("reload failed, nothing changed")
        assert '"ag": "pipe" is a FIFO' in sup.output()
        assert request(sock, "GET", "/healthz").status_code == 200
        answer = request(sock, "POST", "/reload")
        assert answer.status_code == 422, answer.text
        assert '"ag": "pipe" is a FIFO' in answer.json()["error"]
        answer = request(sock, "POST", "/agents", json={"id": "b", "path": "x" * 300})
        assert answer.status_code == 422, answer.text
        assert "request: agents.b.path: " in answer.text
        assert "File name too long" in answer.text
        answer = request(sock, "POST", "/agents", json={"id": "c", "path": str(folder)})
        assert answer.status_code == 422, answer.text
        assert '"pipe" is a FIFO' in answer.json()["error"]
        sup.signal(signal.SIGTERM)
        assert sup.wait_exit() == 0


# --- An in-process agent's KeyboardInterrupt is its own; the supervisor's SIGINT works ---

INTERRUPTS = "async def main(ctx):\n    raise KeyboardInterrupt\n"


def test_an_agents_keyboard_interrupt_is_its_failure_and_sigint_still_stops(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "ki"
    folder.mkdir()
    (folder / "agent.py").write_text(INTERRUPTS)
    idle = folder_agent(tmp_path)
    manifest = tmp_path / "agents.toml"
    manifest.write_text(
        f'[agents.ki]\npath = "ki"\nrestart = "never"\n[agents.idle]\npath = "{idle.name}"\n'
    )
    with SupervisorProcess(manifest) as sup:
        sup.wait_log("crashed: KeyboardInterrupt")
        sup.wait_log("ki: failed")
        assert sup.proc.poll() is None, sup.output()
        sup.signal(signal.SIGINT)
        assert sup.wait_exit() == 0, sup.output()
        assert "SIGINT: stopping gracefully" in sup.output()


# --- Agent text is shown, not obeyed (docs/operations.md, "Agent text") --------------

SHOWS_STATUS = """\
import trio

async def main(ctx):
    ctx.status("\\x1b]0;owned\\x07busy\\nFAKE ROW")
    ctx.log.warning("evil \\x1b[2J\\r\\n12:00:00.000 supervisor | INFO forged by log")
    await trio.sleep_forever()
"""
CRASHES = """\
async def main(ctx):
    raise ValueError("boom\\n12:00:00.000 supervisor | INFO forged by crash\\x1b[31m\\r")
"""
PRINTS = r"printf '\033[2Jhi\rFAKE\n'; printf '\302\233\n'; exec sleep 100000"


def test_control_characters_are_escaped_in_logs_and_status(tmp_path: Path, sock: Path) -> None:
    for name, source in (("shows", SHOWS_STATUS), ("crashes", CRASHES)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "agent.py").write_text(source)
    manifest = tmp_path / "agents.toml"
    manifest.write_text(
        '[agents.shows]\npath = "shows"\n'
        '[agents.crashes]\npath = "crashes"\nrestart = "never"\n'
        f"[agents.prints]\ncommand = {json.dumps(['sh', '-c', PRINTS])}\n"
    )
    with SupervisorProcess(manifest, "--api", f"unix:{sock}") as sup:
        wait_until(sock.exists, what="the API's socket")
        sup.wait_log("crashes: failed")
        sup.wait_log("hi\\rFAKE")
        sup.wait_log("\\x9b")
        wait_until(lambda: request(sock, "GET", "/agents/shows").json()["status"])
        status = subprocess.run(
            [sys.executable, "-m", "supervisor", "status", "--api", f"unix:{sock}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        out = sup.output()
    for shown in (out, status.stdout):
        assert "\x1b" not in shown, shown
        assert "\r" not in shown, shown
        assert "\x9b" not in shown, shown
    # Every line at column 0 is a record: none of the agents' forgeries is one.
    assert not [line for line in out.splitlines() if line.startswith("12:00:00.000")]
    assert "evil \\x1b[2J\\r\\n12:00:00.000 supervisor | INFO forged by log" in out
    forged = "boom\\n12:00:00.000 supervisor | INFO forged by crash\\x1b[31m\\r"
    assert f"crashes | ERROR crashed: ValueError: {forged}\n    Traceback" in out
    assert f"supervisor | WARNING crashes: failed (ValueError: {forged})\n" in out
    rows = status.stdout.splitlines()
    assert len(rows) == 4, status.stdout  # the header and three agents
    assert "\\x1b]0;owned\\x07busy\\nFAKE ROW" in rows[3] + rows[2] + rows[1]
