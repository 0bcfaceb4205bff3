"""The state file's I/O: reading it, writing it whole or not at all, setting it aside.

A TOML file of ``[agents.ID]`` tables, each the agent's keys as they were sent. A write
is complete or does not happen: the bytes go to a temporary file beside it (every byte
written, flushed, fsynced, read back and compared), which is then renamed over the old
one, and the folder is fsynced. On any failure the temporary file is removed and the old
file stays as it was. A file that cannot be read back is never dropped silently: it is
moved aside, and the supervisor says so. The logic above it is `supervisor.overlay`'s.

May import: `supervisor.manifest` (reading TOML, errors), `supervisor.logs`, `tomli_w`.
"""

from __future__ import annotations

import errno
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from supervisor import manifest as mf
from supervisor.logs import log
from supervisor.manifest import ManifestError


def read(path: Path) -> dict[str, dict[str, Any]]:
    """The agent tables in `path`. Raises ManifestError if the file is not a state file."""
    raw = mf.read_toml(path)
    tables = raw.get("agents", {})
    if (
        set(raw) - {"agents"}
        or not isinstance(tables, dict)
        or not all(isinstance(table, dict) for table in tables.values())
    ):
        raise ManifestError([f"{path}: expected only [agents.*] tables"])
    return tables


def encode(agents: Mapping[str, dict[str, Any]]) -> bytes:
    """The file's bytes for `agents`. Raises TypeError/ValueError for what TOML cannot hold."""
    import tomli_w  # here: a start that never writes the file does not load it (nor datetime)

    return tomli_w.dumps({"agents": dict(agents)}).encode()


def aside_name(path: Path, what: str) -> Path:
    """``NAME.WHAT-TIME`` beside `path`, a name not taken yet."""
    stamp = int(time.time())
    aside = path.with_name(f"{path.name}.{what}-{stamp}")
    n = 1
    while aside.exists():
        aside = path.with_name(f"{path.name}.{what}-{stamp}.{n}")
        n += 1
    return aside


def set_aside(path: Path, why: ManifestError) -> None:
    """Move an unusable state file out of the way (to ``NAME.corrupt-TIME``), and log.

    Only a regular file is moved (a folder named as the state file is refused by `load`
    before this could happen, and is never moved here).
    """
    if not path.is_file():
        log.error("state file %s is not a regular file; starting without it:\n%s", path, why)
        return
    aside = aside_name(path, "corrupt")
    try:
        path.rename(aside)
    except OSError as err:
        log.error(
            "state file %s is invalid and could not be moved aside (%s); starting without it:\n%s",
            path,
            err,
            why,
        )
    else:
        log.error("state file %s is invalid, moved to %s:\n%s", path, aside, why)


def write(path: Path, agents: Mapping[str, dict[str, Any]]) -> None:
    """Replace `path` with `agents`, whole or not at all.

    Raises:
      OSError: the file could not be written completely (a full disk, a read-only or
        missing folder, ...): then the old file is untouched.
      TypeError, ValueError: `agents` holds what TOML cannot (check with `encode` first).
    """
    write_bytes(path, encode(agents))


def write_bytes(path: Path, data: bytes) -> None:
    """Replace `path` with `data` as `write` does. Raises OSError; then nothing changed."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        try:
            _write_all(fd, data)
            os.fsync(fd)
            if os.pread(fd, len(data) + 1, 0) != data:
                raise OSError(errno.EIO, "the written file does not read back as written")
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass  # already renamed, or gone: nothing of ours is left
        raise
    try:
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)  # the rename itself is durable only once the folder is synced
        finally:
            os.close(folder)
    except OSError as exc:  # the new file is in place; only its durability is in doubt
        log.warning("state file %s written, but its folder could not be synced: %s", path, exc)


def _write_all(fd: int, data: bytes) -> None:
    """Write every byte of `data`: `os.write` may write fewer (a full disk, a signal)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError(errno.ENOSPC, "no space left on the device")
        view = view[n:]
