"""Folder agents: an agent whose `path` names a folder holding its keys and its code.

The folder holds an agent.toml or an agent.json (agent keys, which say the kind), or
only an agent.py (then the entry is "agent:main"). Its files are hashed into the spec's
`digest`, so that editing the agent's code changes its spec and a reload restarts it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import attrs

from supervisor.manifest.check import (
    Problems,
    absolute,
    kinds_message,
    parse_json,
    parse_toml,
    read_layer,
    read_text,
)
from supervisor.manifest.convert import show
from supervisor.manifest.model import FOLDER_ENTRY, FOLDER_FILES, ManifestError


def folder_id(table: Any, base: Path) -> str | None:
    """The id of a `path` agent given without one: its folder's name."""
    written = table.get("path") if isinstance(table, dict) else None
    if not isinstance(written, str) or not written:
        return None
    return absolute(base, written).name


@attrs.frozen
class Folder:
    """A folder agent's folder, read: what it adds to the agent's keys."""

    path: Path
    values: dict[str, Any]  # the keys its agent.toml or agent.json gives, checked
    digest: str


def read_folder(
    written: str, shown: str, *, where: str, label: str, base: Path, problems: Problems
) -> Folder | None:
    """Read the folder a `path` key names; None if it has problems (reported).

    `shown` is the folder as messages name it (and the files in it).
    """
    folder = absolute(base, written)
    if not folder.is_dir():
        problem = "is not a folder" if folder.exists() else "does not exist"
        problems.add(label, f"{where}.path", f"{show(written)} {problem}")
        return None
    found = [name for name in FOLDER_FILES if (folder / name).is_file()]
    has_main = (folder / "agent.py").is_file()
    if len(found) > 1:
        problems.add(
            label, f"{where}.path", f"{show(written)} has both agent.toml and agent.json; keep one"
        )
        return None
    if not found and not has_main:
        problems.add(
            label, f"{where}.path", f"no agent.toml, agent.json or agent.py in {show(written)}"
        )
        return None
    if not found:
        return Folder(folder, {"entry": FOLDER_ENTRY}, folder_digest(folder))
    file_label = os.path.join(shown, found[0])
    values = _folder_keys(folder / found[0], file_label, where, has_main, problems)
    return None if values is None else Folder(folder, values, folder_digest(folder))


def _folder_keys(
    file: Path, label: str, where: str, has_main: bool, problems: Problems
) -> dict[str, Any] | None:
    """The agent keys in a folder's agent.toml or agent.json; they say the agent's kind."""
    try:
        text = read_text(file, label)
        doc = parse_json(text, label) if file.suffix == ".json" else parse_toml(text, label)
    except ManifestError as e:
        problems.messages.extend(e.errors)
        return None
    values = read_layer(doc, label=label, where=lambda: where, base=file.parent, problems=problems)
    if values is None:
        return None
    if "path" in values:
        problems.add(label, f"{where}.path", f"not allowed in {file.name}: the folder is the agent")
        return None
    given = [key for key in ("entry", "command") if key in values]
    if not given and has_main:
        values["entry"] = FOLDER_ENTRY
    elif len(given) != 1:
        message = kinds_message(given, ("entry", "command"))
        problems.add(label, where, message + (" (or add an agent.py)" if not given else ""))
        return None
    return values


def folder_digest(folder: Path) -> str:
    """A hash of a folder's files, names and contents, so that editing its code shows.

    Caches are skipped: ``__pycache__``, ``*.pyc``, ``.git`` and tools' ``.*_cache``
    folders. A file that cannot be read counts by its name only.
    """
    digest = hashlib.blake2b(digest_size=16)
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(name for name in dirnames if not _skipped_dir(name))
        for name in sorted(filenames):
            if name.endswith(".pyc"):
                continue
            file = os.path.join(dirpath, name)
            digest.update(os.path.relpath(file, folder).encode() + b"\0")
            try:
                with open(file, "rb") as f:
                    digest.update(hashlib.blake2b(f.read(), digest_size=16).digest())
            except OSError:
                digest.update(b"\0unreadable\0")
    return digest.hexdigest()


def _skipped_dir(name: str) -> bool:
    return name in ("__pycache__", ".git") or (name.startswith(".") and name.endswith("_cache"))
