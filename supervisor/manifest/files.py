"""Reading the manifest's files and agent folders' files: regular files only, bounded.

Nothing here can block on a file that is not a regular file, nor read one whole into
memory. Each path is `stat`-ed first (following symlinks), and a FIFO, a socket or a
device (or a symlink to one, such as ``/dev/zero``) is refused without being opened;
a regular file is opened with ``O_NONBLOCK`` and checked again on the open descriptor
(it may have been swapped meanwhile), then read in chunks of `CHUNK` bytes. Sizes are
bounded by the caller's limit (docs/manifest.md, "Limits").

Every `OSError` becomes a `Refused` whose message says why, for a located error
(``FILE: agents.ID.path: ...``): nothing here raises an `OSError`.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path

from supervisor.manifest.model import ManifestError

CHUNK = 1 << 20  # bytes read at a time: memory per file read, whatever its size
MIB = 1 << 20


# How files are opened: never blocking (a FIFO swapped in after the check), never
# becoming the controlling terminal.
READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY


class Refused(Exception):
    """A file or folder that cannot, or may not, be read. The message says why."""


class TooBig(Refused):
    """A file holds more than the limit it is read with."""


def os_reason(exc: OSError) -> str:
    """An `OSError` as a user reads it: ``cannot read: Permission denied``."""
    if exc.errno == errno.ELOOP:
        return "cannot read: too many levels of symbolic links (a symlink loop?)"
    return f"cannot read: {exc.strerror or exc}"


def kind_of(mode: int) -> str:
    """What a file that is not a regular file is, for messages: ``a FIFO``."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    return "not a regular file"


def stat_path(path: str) -> os.stat_result:
    """`os.stat` (following symlinks); Refused with the reason if it fails."""
    try:
        return os.stat(path)
    except OSError as exc:
        raise Refused(os_reason(exc)) from None
    except ValueError:  # an embedded NUL
        raise Refused("cannot read: the path holds a NUL character") from None


def _refuse_unless_regular(mode: int) -> None:
    if not stat.S_ISREG(mode):
        kind = kind_of(mode)
        refused = "is" if kind.startswith("not") else f"is {kind},"
        raise Refused(f"{refused} not a regular file; only regular files are read")


def open_regular(path: str) -> int:
    """A read-only descriptor on the regular file `path` (the caller closes it).

    Raises:
      Refused: `path` is not a regular file (it is not opened then), or cannot be opened.
    """
    _refuse_unless_regular(stat_path(path).st_mode)
    try:
        fd = os.open(path, READ_FLAGS)
    except OSError as exc:
        raise Refused(os_reason(exc)) from None
    try:
        _refuse_unless_regular(os.fstat(fd).st_mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_chunks(fd: int, limit: int, consume: Callable[[bytes], object]) -> int:
    """Feed the file on `fd` to `consume`, a chunk at a time; return how many bytes.

    Raises:
      TooBig: the file holds more than `limit` bytes (it was read up to there).
      Refused: a read failed.
    """
    total = 0
    while True:
        try:
            chunk = os.read(fd, min(CHUNK, limit - total + 1))
        except OSError as exc:
            raise Refused(os_reason(exc)) from None
        if not chunk:
            return total
        total += len(chunk)
        if total > limit:
            raise TooBig(f"holds more than {limit // MIB} MiB")
        consume(chunk)


def read_bytes(path: str, limit: int) -> bytes:
    """The contents of the regular file `path`, of at most `limit` bytes.

    Raises:
      Refused: not a regular file, larger than `limit`, or unreadable.
    """
    fd = open_regular(path)
    parts: list[bytes] = []
    try:
        read_chunks(fd, limit, parts.append)
    finally:
        os.close(fd)
    return b"".join(parts)


# A manifest or included file larger than this is refused (docs/manifest.md, "Limits"):
# 10,000 agents take under 1 MiB.
MAX_FILE_BYTES = 64 * MIB


def read_text(path: Path, label: str) -> str:
    """The text of a regular file; ManifestError, labelled, if it cannot be read as UTF-8.

    A FIFO, a device or a socket is refused without being opened (see
    `supervisor.manifest.files`), and so is a file over `MAX_FILE_BYTES`.
    """
    try:
        data = read_bytes(str(path), MAX_FILE_BYTES)
    except Refused as e:
        raise ManifestError([f"{label}: {e}"]) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ManifestError([f"{label}: not UTF-8 text ({e.reason} at byte {e.start})"]) from None
