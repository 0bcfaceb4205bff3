"""The ``--watch`` watcher against real files and a real inotify watch (no supervisor).

`watch_manifest` gets the manifest, the agent folders and a `reload` that records what
the file held when it was called.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import trio

from supervisor import manifest as mf
from supervisor.watch import fingerprint, watch_manifest, watched_folders


def agent(version: int) -> str:
    return f'[agents.a]\ncommand = ["true"]\nenv = {{ V = "{version}" }}\n'


def put(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def read(path: Path) -> str:
    return path.read_text()


async def test_a_write_during_a_reload_is_seen_once_the_watch_is_armed_again(
    tmp_path: Path,
) -> None:
    path = tmp_path / "agents.toml"
    put(path, agent(1))
    m = mf.load(path)
    seen: list[str] = []
    twice = trio.Event()

    async def reload() -> None:
        seen.append(read(path))
        if len(seen) == 1:
            put(path, agent(3))  # lands while the watch is down: no event will tell
        else:
            twice.set()

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(watch_manifest, lambda: m, list, reload)
            put(path, agent(2))
            await twice.wait()
            nursery.cancel_scope.cancel()
    assert seen == [agent(2), agent(3)]


async def test_a_change_in_a_folder_agents_files_reloads(tmp_path: Path) -> None:
    folder = tmp_path / "worker"
    folder.mkdir()
    (folder / "agent.toml").write_text('command = ["true"]\n')
    path = tmp_path / "agents.toml"
    put(path, '[agents.worker]\npath = "worker"\n')
    m = mf.load(path)
    reloaded = trio.Event()

    async def reload() -> None:
        reloaded.set()

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(watch_manifest, lambda: m, lambda: [folder], reload)
            (folder / "data.txt").write_text("new\n")
            await reloaded.wait()
            nursery.cancel_scope.cancel()


async def test_cancelling_the_watch_returns_within_a_step(tmp_path: Path) -> None:
    path = tmp_path / "agents.toml"
    put(path, agent(1))
    m = mf.load(path)

    async def reload() -> None:
        pass

    async with trio.open_nursery() as nursery:
        await nursery.start(watch_manifest, lambda: m, list, reload)
        await trio.sleep(0.2)
        began = time.monotonic()
        nursery.cancel_scope.cancel()
    took = time.monotonic() - began
    assert took < 2.0, f"took {took:.2f}s"  # it used to wait out a 5 s timeout (4.7 s)


def test_includes_resolve_as_load_resolves_them(tmp_path: Path) -> None:
    conf = tmp_path / "conf.d"
    conf.mkdir()
    (conf / "b.toml").write_text('[agents.b]\ncommand = ["true"]\n')
    path = tmp_path / "agents.toml"
    # An absolute glob: the watcher's own copy of the resolution raised NotImplementedError.
    put(path, f'[supervisor]\ninclude = ["{conf}/*.toml"]\n{agent(1)}')
    m = mf.load(path)
    assert set(m.agents) == {"a", "b"}
    assert watched_folders(m, []) == {tmp_path, conf}
    before = fingerprint(m, [])
    (conf / ".hidden.toml").write_text("not = 'read by load'\n")  # load skips dotfiles
    assert fingerprint(m, []) == before
    (conf / "b.toml").write_text('[agents.b]\ncommand = ["false"]\n')
    assert fingerprint(m, []) != before


async def test_a_write_before_the_watch_is_armed_is_applied(tmp_path: Path) -> None:
    path = tmp_path / "agents.toml"
    put(path, agent(1))
    m = mf.load(path)
    baseline = fingerprint(m, [])  # what `supervisor run` takes right after loading
    put(path, agent(2))  # lands before the watch exists
    reloaded = trio.Event()

    async def reload() -> None:
        reloaded.set()

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(watch_manifest, lambda: m, list, reload, applied=baseline))
            await reloaded.wait()
            nursery.cancel_scope.cancel()
