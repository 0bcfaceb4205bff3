"""Running a real `supervisor run` in a subprocess, and waiting on conditions.

Tests wait with deadlines, never fixed sleeps: `wait_until` polls a condition and fails
with a message once its deadline passes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout: float = 10.0, what: str = "") -> T:
    """Poll `condition` until it returns something truthy; return that. Fail at `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(0.01)


def alive(pid: int) -> bool:
    """Whether `pid` is a live process (zombies count as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return not stat[stat.rindex(")") + 2 :].startswith(("Z", "X"))


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes whose process group is `pgid`."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry))
    return members


def lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


class SupervisorProcess:
    """A `supervisor run MANIFEST` subprocess whose stdout goes to a file."""

    def __init__(
        self,
        manifest: Path,
        *args: str,
        prefix: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.log_path = manifest.parent / f"supervisor-{time.monotonic_ns()}.log"
        self._log = self.log_path.open("wb")
        cmd = [*prefix, sys.executable, "-m", "supervisor", "run", str(manifest), *args]
        if "--api" not in args:
            cmd += ["--api", ""]
        self.proc = subprocess.Popen(
            cmd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=manifest.parent,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = 10.0, count: int = 1) -> None:
        """Wait until `text` appears `count` times in the output."""
        wait_until(lambda: self.output().count(text) >= count, timeout, f"{text!r} in output")

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait_exit(self, timeout: float = 15.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"supervisor still running after {timeout}s:\n{self.output()}")

    def close(self) -> None:
        """Make sure nothing is left: SIGKILL if still running."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self._log.close()

    def __enter__(self) -> SupervisorProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
