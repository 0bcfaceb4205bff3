"""``--watch`` end to end: a burst of writes always ends on the last one, in both layouts
a manifest is replaced by (a ConfigMap's ``..data`` symlink swap, a plain rename), and a
SIGTERM with ``--watch`` returns promptly.

Two writes land `gap` ms apart, for gaps swept from 0 to 600 ms: the agent must end up
running the second, whatever the gap (a write landing while a reload runs, or while the
watch is re-armed, included).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ..harness import SupervisorProcess, alive, wait_until
from .test_run import recorder, starts, write

pytestmark = pytest.mark.slow

GAPS_MS = range(0, 601, 40)


def plain(folder: Path) -> tuple[Path, Callable[[int], None]]:
    """A manifest replaced by rename (an editor's or a deploy tool's atomic write)."""
    path = folder / "agents.toml"

    def put(version: int) -> None:
        agent = recorder(folder, "a")
        agent["env"] = {"V": str(version)}
        write(path, {"a": agent})

    return path, put


def configmap(folder: Path) -> tuple[Path, Callable[[int], None]]:
    """Kubernetes' layout: agents.toml -> ..data/agents.toml, ..data -> ..VERSION."""
    vol = folder / "config"
    vol.mkdir()
    (vol / "agents.toml").symlink_to("..data/agents.toml")

    def put(version: int) -> None:
        data = vol / f"..v{version}"
        data.mkdir()
        agent = recorder(folder, "a")
        agent["env"] = {"V": str(version)}
        write(data / "agents.toml", {"a": agent})
        (vol / "..data_tmp").symlink_to(data.name)
        (vol / "..data_tmp").rename(vol / "..data")

    return vol / "agents.toml", put


@pytest.mark.parametrize("layout", [plain, configmap], ids=["rename", "configmap"])
def test_a_burst_of_writes_ends_on_the_last_one(
    tmp_path: Path, layout: Callable[[Path], tuple[Path, Callable[[int], None]]]
) -> None:
    manifest, put = layout(tmp_path)
    put(1)
    with SupervisorProcess(manifest, "--watch") as sup:
        sup.wait_log("watching")
        version = 1
        for gap in GAPS_MS:
            put(version + 1)
            time.sleep(gap / 1000)
            put(version + 2)
            version += 2

            def on_last(v: str = str(version)) -> bool:
                s = starts(tmp_path, "a")
                return bool(s) and s[-1][1] == v and alive(s[-1][0])

            wait_until(on_last, timeout=20, what=f"the agent on V={version} (gap {gap} ms)")
        assert sup.proc.poll() is None


def test_sigterm_with_watch_returns_promptly(tmp_path: Path) -> None:
    manifest, put = plain(tmp_path)
    put(1)
    with SupervisorProcess(manifest, "--watch") as sup:
        sup.wait_log("watching")
        wait_until(lambda: starts(tmp_path, "a"), what="a started")
        wait_until(lambda: alive(starts(tmp_path, "a")[-1][0]), what="a up")
        began = time.monotonic()
        sup.signal(signal.SIGTERM)
        assert sup.wait_exit() == 0
        took = time.monotonic() - began
    # The watcher's thread stops within a 50 ms step; it used to wait out a 5 s timeout.
    assert took < 2.5, f"took {took:.2f}s"
