"""Folder agents: an agent whose `path` names a folder holding its keys and its code.

The folder holds an agent.toml or an agent.json (agent keys, which say the kind), or
only an agent.py (then the entry is "agent:main"). Its files are hashed into the spec's
`digest`, so that editing the agent's code changes its spec and a reload restarts it.

Reading a folder is blocking file work, bounded: regular files only (a FIFO, a socket or
a device in the folder, or a symlink to one, refuses the agent), read a chunk at a time,
at most `MAX_FOLDER_BYTES` of contents and `MAX_FOLDER_ENTRIES` entries per folder
(docs/manifest.md, "Limits"). The supervisor does it in a worker thread, off its loop.
"""

from __future__ import annotations

import os
from _blake2 import blake2b  # hashlib's, without loading OpenSSL (~5 MiB) as hashlib does
from pathlib import Path
from stat import S_ISDIR, S_ISREG
from typing import Any

import attrs

from supervisor.manifest.check import (
    Problems,
    absolute,
    kinds_message,
    parse_json,
    parse_toml,
    read_layer,
)
from supervisor.manifest.convert import show
from supervisor.manifest.files import (
    MIB,
    READ_FLAGS,
    Refused,
    TooBig,
    kind_of,
    os_reason,
    read_chunks,
    read_text,
)
from supervisor.manifest.model import FOLDER_ENTRY, FOLDER_FILES, ManifestError

# A folder agent's folder holds its code and configuration: at most this many bytes of
# files and this many files and folders (caches excepted), or the agent is refused.
MAX_FOLDER_BYTES = 64 * MIB
MAX_FOLDER_ENTRIES = 10_000


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

    `shown` is the folder as messages name it (and the files in it). Blocking file work:
    callers on an event loop run it in a worker thread (docs/manifest.md, "Limits").
    """
    folder = absolute(base, written)
    try:
        found, has_main = _agent_files(str(folder))
        if len(found) > 1:
            raise Refused("has both agent.toml and agent.json; keep one")
        if not found and not has_main:
            problems.add(
                label, f"{where}.path", f"no agent.toml, agent.json or agent.py in {show(written)}"
            )
            return None
        digest = folder_digest(folder)
    except Refused as e:
        reason = str(e)
        sep = ": " if reason.startswith(("cannot", '"')) else " "
        problems.add(label, f"{where}.path", f"{show(written)}{sep}{reason}")
        return None
    if not found:
        return Folder(folder, {"entry": FOLDER_ENTRY}, digest)
    file_label = os.path.join(shown, found[0])
    values = _folder_keys(folder / found[0], file_label, where, has_main, problems)
    return None if values is None else Folder(folder, values, digest)


def _agent_files(folder: str) -> tuple[list[str], bool]:
    """Which of agent.toml and agent.json the folder holds, and whether an agent.py.

    Raises:
      Refused: `folder` is not a folder, does not exist, or cannot be entered.
    """
    try:
        mode = os.stat(folder).st_mode
    except FileNotFoundError:
        raise Refused("does not exist") from None
    except OSError as e:
        raise Refused(os_reason(e)) from None
    except ValueError:  # no file's name holds a NUL (the OS is never asked)
        raise Refused("has a NUL character: no folder is named so") from None
    if not S_ISDIR(mode):
        raise Refused("is not a folder" if S_ISREG(mode) else f"is {kind_of(mode)}, not a folder")
    try:
        names = set(os.listdir(folder))
    except OSError as e:
        raise Refused(os_reason(e)) from None
    found = [name for name in FOLDER_FILES if name in names]
    return found, "agent.py" in names


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
    folders. Symlinks to files are followed; symlinks to folders are not (they count by
    name, as do files and folders that cannot be read, and dangling symlinks).
    Contents are read a chunk at a time, off the event loop's thread for callers that
    have one.

    Raises:
      Refused: the folder holds something other than regular files and folders (a
        FIFO, a socket, a device, a symlink to one), more than `MAX_FOLDER_BYTES` of
        files or more than `MAX_FOLDER_ENTRIES` entries, or cannot be read itself.
    """
    walk = _Walk(str(folder))
    walk.run()
    return walk.digest.hexdigest()


@attrs.define
class _Walk:
    """One walk of a folder for its digest: names and contents, in a stable order.

    Each folder's files come first, by name, then each of its subfolders, by name,
    depth first: the order the digest depends on.
    """

    top: str
    digest: blake2b = attrs.Factory(lambda: blake2b(digest_size=16))
    size: int = 0  # bytes of contents read so far
    entries: int = 0

    def run(self) -> None:
        pending = [""]  # folders to read, relative to top, the next one last
        first = True
        while pending:
            relative = pending.pop()
            try:
                listed = sorted(os.scandir(os.path.join(self.top, relative)), key=_name)
            except OSError as e:
                if first:
                    raise Refused(os_reason(e)) from None
                self._count(relative, b"\0unreadable folder\0")
                continue
            first = False
            folders = []
            for entry in listed:
                self.entries += 1
                if self.entries > MAX_FOLDER_ENTRIES:
                    raise Refused(f"holds more than {MAX_FOLDER_ENTRIES} files and folders")
                name = os.path.join(relative, entry.name)
                if _is_real_dir(entry):
                    if not _skipped_dir(entry.name):
                        folders.append(name)
                elif not entry.name.endswith(".pyc"):
                    self._file(entry, name)
            pending.extend(reversed(folders))

    def _count(self, relative: str, what: bytes) -> None:
        self.digest.update(relative.encode("utf-8", "surrogateescape") + b"\0" + what)

    def _file(self, entry: os.DirEntry[str], relative: str) -> None:
        """Add one file: its name and a hash of its contents, read a chunk at a time."""
        try:
            if entry.is_file(follow_symlinks=False):
                # A regular file, as the folder listing says: open it without a stat, and
                # without following a symlink that may have replaced it since.
                fd = os.open(entry.path, READ_FLAGS | os.O_NOFOLLOW)
            else:
                mode = os.stat(entry.path).st_mode
                if S_ISDIR(mode):  # a symlink to a folder: not followed
                    self._count(relative, b"\0folder link\0")
                    return
                if not S_ISREG(mode):  # refused before it is opened
                    raise Refused(f"{show(relative)} {_not_regular(mode)}")
                fd = os.open(entry.path, READ_FLAGS)
        except OSError:  # unreadable, a dangling symlink or a loop, a file gone meanwhile
            self._count(relative, b"\0unreadable\0")
            return
        try:
            st = os.fstat(fd)
            if not S_ISREG(st.st_mode):  # swapped between the listing and the open
                raise Refused(f"{show(relative)} {_not_regular(st.st_mode)}")
            if self.size + st.st_size > MAX_FOLDER_BYTES:
                raise Refused(self._too_big(relative))
            contents = blake2b(digest_size=16)
            try:
                self.size += read_chunks(fd, MAX_FOLDER_BYTES - self.size, contents.update)
            except TooBig:
                raise Refused(self._too_big(relative)) from None
        finally:
            os.close(fd)
        self.digest.update(relative.encode("utf-8", "surrogateescape") + b"\0")
        self.digest.update(contents.digest())

    def _too_big(self, relative: str) -> str:
        return (
            f"holds more than {MAX_FOLDER_BYTES // MIB} MiB of files (the limit was passed at"
            f" {show(relative)}); keep data, environments and dependencies outside the folder"
        )


def _skipped_dir(name: str) -> bool:
    return name in ("__pycache__", ".git") or (name.startswith(".") and name.endswith("_cache"))


def _name(entry: os.DirEntry[str]) -> str:
    return entry.name


def _is_real_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def _not_regular(mode: int) -> str:
    return (
        f"is {kind_of(mode)}: an agent folder may hold only regular files and folders"
        " (move it out of the folder)"
    )
