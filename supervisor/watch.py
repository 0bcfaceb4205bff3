"""``--watch``: reload when the manifest, an included file or an agent folder changes.

We watch folders, not files: a Kubernetes ConfigMap volume updates by renaming a fresh
``..data`` symlink over the old one, so the manifest file itself is never modified and a
watch on it stays silent.

No write can be lost. The watcher keeps the *fingerprint* of what it last had applied:
the bytes the manifest path resolves to, each included file (resolved exactly as
`supervisor.manifest.load` does it: `manifest.included_files`), and each folder agent's
folder digest. It compares the fingerprint of what is on disk now with that one after
every batch of events and also right after (re-)arming the watch, so a write that lands
while the watch is down (during a reload, or before the first one) is seen then. When they
differ it asks for a reload, waits for it to be done (the folders to watch may have changed
with it), and arms again. A burst of writes therefore converges on the last one: at worst
one more reload than needed.

Cancelling returns within a step of the watching thread (`STEP_MS`), not after a timeout:
the thread's stop event is set as soon as the cancellation arrives.

May import: trio, watchfiles, `supervisor.manifest`, `supervisor.logs`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

import trio
from watchfiles._rust_notify import RustNotify

from supervisor import manifest as mf
from supervisor.logs import log
from supervisor.manifest import Manifest

DEBOUNCE_MS = 100  # group the events of a burst for up to this long
STEP_MS = 50  # the watching thread looks at its stop event this often
# RustNotify's debug, force_polling, poll_delay_ms, recursive, ignore_permission_denied
_OPTIONS = (False, False, 50, True, True)


def fingerprint(m: Manifest, agent_folders: Iterable[Path]) -> str:
    """A digest of what `m`'s files and `agent_folders` hold now (blocking: reads files)."""
    h = hashlib.blake2b(digest_size=16)
    for path in [m.path, *mf.included_files(m)]:
        h.update(str(path).encode() + b"\0")
        try:
            h.update(path.read_bytes())
        except OSError as exc:
            h.update(f"\0unreadable {exc.errno}".encode())
    for folder in agent_folders:
        h.update(str(folder).encode() + b"\0")
        try:
            h.update(mf.folder_digest(folder).encode())
        except Exception as exc:  # refused or unreadable: its state is what counts
            h.update(f"\0{type(exc).__name__}: {exc}".encode())
    return h.hexdigest()


def watched_folders(m: Manifest, agent_folders: Iterable[Path]) -> set[Path]:
    """The folders whose events may change `fingerprint(m, agent_folders)`."""
    folders = {m.path.parent, *(p.parent for p in mf.included_files(m))}
    folders.update(p for p in agent_folders if p.is_dir())
    return {f for f in folders if f.is_dir()}


async def watch_manifest(
    current: Callable[[], Manifest],
    agent_folders: Callable[[], list[Path]],
    reload: Callable[[], Awaitable[object]],
    *,
    applied: str | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Reload whenever what the manifest resolves to changes, until cancelled.

    Args:
      current: the manifest now in force (after the last successful reload).
      agent_folders: the folders of folder agents now in force.
      reload: requests a reload and waits until it is done (its errors are logged by
        the owner; they are ignored here).
      applied: the `fingerprint` of what is in force, taken when it was loaded; if not
        given, of what is there when this starts.
    """
    if applied is None:
        applied = await trio.to_thread.run_sync(fingerprint, current(), agent_folders())
    started = False
    while True:
        m, folders = current(), agent_folders()
        try:
            watcher = RustNotify([str(f) for f in watched_folders(m, folders)], *_OPTIONS)
        except OSError as exc:  # a folder went away meanwhile: look again in a moment
            log.warning("--watch: cannot watch (%s); trying again", exc)
            await trio.sleep(0.5)
            continue
        with watcher:
            if not started:
                task_status.started()  # armed: from here on no write goes unseen
                started = True
                log.info("--watch: watching %s and what it includes", m.path)
            while True:
                # Right after arming, and after every batch of events: what is there now?
                now = await trio.to_thread.run_sync(fingerprint, m, folders)
                if now != applied:
                    break
                await _wait_for_events(watcher)
        applied = now
        try:
            await reload()
        except (
            Exception
        ) as exc:  # an invalid manifest: the owner said why; wait for the next change
            log.debug("--watch: reload refused: %s", exc)


async def _wait_for_events(watcher: RustNotify) -> None:
    """Wait for the next batch of events (or a stop). Cancellation sets the thread's stop
    event at once, so this returns within `STEP_MS` of being cancelled."""
    stop = trio.Event()  # read by the watching thread; set only from here
    async with trio.open_nursery() as nursery:

        async def watch() -> None:
            await trio.to_thread.run_sync(watcher.watch, DEBOUNCE_MS, STEP_MS, 0, stop)
            nursery.cancel_scope.cancel()

        nursery.start_soon(watch)
        try:
            await trio.sleep_forever()
        finally:
            stop.set()
