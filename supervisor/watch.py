"""``--watch``: reload when the manifest, an included file or an agent folder changes.

We watch folders, not files: a Kubernetes ConfigMap volume updates by renaming a fresh
``..data`` symlink over the old one, so the manifest file itself is never modified and a
watch on it stays silent. On any event in a watched folder we compare a digest of what
the manifest path (and each included file) now resolves to, and of the agent folders'
paths touched, and reload only when something of ours changed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import trio
import watchfiles

from supervisor.manifest import Manifest


def manifest_digest(m: Manifest) -> str:
    """A digest of the manifest file's and its included files' current content."""
    h = hashlib.blake2b(digest_size=16)
    for path in [m.path, *included_files(m)]:
        try:
            h.update(path.read_bytes())
        except OSError:
            h.update(b"\0missing")
    return h.hexdigest()


def included_files(m: Manifest) -> list[Path]:
    base = m.path.parent
    return sorted(p for pattern in m.settings.include for p in base.glob(pattern))


def watched_folders(m: Manifest, agent_folders: list[Path]) -> set[Path]:
    folders = {m.path.parent, *(p.parent for p in included_files(m))}
    folders.update(p for p in agent_folders if p.is_dir())
    return folders


async def watch_manifest(
    current: Callable[[], Manifest],
    agent_folders: Callable[[], list[Path]],
    reload: Callable[[], object],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Call `reload()` whenever a change that matters lands, until cancelled.

    Args:
      current: the manifest now in force (after the last successful reload).
      agent_folders: the folders of folder agents now in force.
      reload: requests a reconcile (coalesced by the supervisor).
    """
    # watchfiles sets its watcher up inside `awatch`, a moment after this: changes in
    # that moment are missed (tests poke until they see a reload).
    task_status.started()
    while True:
        m = current()
        folders = agent_folders()
        last = manifest_digest(m)
        stop = trio.Event()
        async for changes in watchfiles.awatch(
            *watched_folders(m, folders), stop_event=stop, recursive=True, debounce=100
        ):
            touched = [Path(p) for _, p in changes]
            in_agent = any(t.is_relative_to(f) for t in touched for f in folders)
            now = manifest_digest(m)
            if now != last or in_agent:
                last = now
                reload()
                stop.set()  # re-read what to watch: includes or folders may have changed
