"""The state file: agents loaded over the API, kept across restarts of the supervisor.

A TOML file of ``[agents.ID]`` tables, each the agent's keys as they were sent. It is
written whole and atomically (write a temporary file, fsync, rename over, fsync the
folder), so a crash leaves either the old file or the new one. A file that cannot be read
back is never dropped silently: it is moved aside, and the supervisor says so.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomli_w

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


def set_aside(path: Path, why: ManifestError) -> None:
    """Move an unusable state file out of the way (to ``NAME.corrupt-TIME``), and log."""
    aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
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
    """Replace `path` with `agents`, atomically. Raises OSError; then nothing changed."""
    data = tomli_w.dumps({"agents": dict(agents)}).encode()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        os.unlink(tmp)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # the rename itself is durable only once the folder is synced
    finally:
        os.close(folder)
