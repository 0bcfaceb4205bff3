"""The `supervisor` command itself: light client imports, --version, help texts, pipes.

Every test runs the real command in a subprocess (`python -m supervisor ...`).
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest

from supervisor import __version__
from supervisor.cli.client import DEFAULT_API
from supervisor.manifest import DEFAULT_API as MANIFEST_DEFAULT_API

HEAVY = ("trio", "cattrs", "httpx", "supervisor.manifest", "starlette", "hypercorn", "anyio")


def supervisor(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        **kw,  # type: ignore[call-overload]
    )


@pytest.mark.parametrize(
    "command", [["status"], ["status", "web", "--json"], ["stop", "web"], ["reload"]]
)
def test_client_commands_import_no_heavy_module(command: list[str], tmp_path: Path) -> None:
    """`supervisor status` answers fast: no trio, manifest model, cattrs or httpx."""
    sock = f"unix:{tmp_path / 'none.sock'}"
    ran = supervisor("-X", "importtime", "-m", "supervisor", *command, "--api", sock)
    assert ran.returncode == 2  # nobody answers there
    imported = {line.split("|")[-1].strip() for line in ran.stderr.splitlines() if "|" in line}
    assert "supervisor.cli.client" in imported  # the measure works
    heavy = sorted(m for m in imported if m.split(".")[0] in HEAVY or m in HEAVY)
    heavy += sorted(m for m in imported if m.startswith("supervisor.manifest"))
    assert heavy == [], heavy


def test_the_client_default_address_is_the_manifest_default() -> None:
    assert DEFAULT_API == MANIFEST_DEFAULT_API


def test_version() -> None:
    ran = supervisor("-m", "supervisor", "--version")
    assert (ran.returncode, ran.stdout) == (0, f"supervisor {__version__}\n")


@pytest.mark.parametrize(
    ("command", "said"),
    [
        ("run", ["exit codes: 0", "3 a critical agent failed", "text: one readable line", "DEBUG"]),
        ("check", ["exit codes: 0 valid; 2 invalid"]),
        ("status", ["exit codes: 0", "no supervisor answers"]),
        ("reload", ["1 reloaded, but an agent failed to start"]),
        ("stop", ["0 the agent has stopped"]),
        ("start", ["or its start failed"]),
    ],
)
def test_help_gives_exit_codes_and_choices(command: str, said: list[str]) -> None:
    ran = supervisor("-m", "supervisor", command, "--help", env={"COLUMNS": "1000"})
    assert ran.returncode == 0
    for text in said:
        assert text in ran.stdout, text


def test_a_reader_that_leaves_early_gets_no_traceback() -> None:
    """`supervisor schema | head -1`: the pipe closes before the schema is all written
    (a one-page pipe, so the schema cannot fit in it whole)."""
    read, write = os.pipe()
    fcntl.fcntl(read, fcntl.F_SETPIPE_SZ, 4096)
    with subprocess.Popen(
        [sys.executable, "-m", "supervisor", "schema"], stdout=write, stderr=subprocess.PIPE
    ) as proc:
        os.close(write)
        with os.fdopen(read, "rb") as reader:
            assert reader.readline() == b"{\n"  # then closed, as `head -1` does
        assert proc.stderr is not None
        err = proc.stderr.read()
        assert proc.wait(timeout=60) == 0
    assert b"Traceback" not in err, err
