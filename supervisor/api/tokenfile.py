"""The token a supervisor makes for itself, in a file only its user can read.

With no token configured, a supervisor whose API listens on TCP makes a random token at
start and writes it to ``RUNTIME_DIR/api-PORT.token`` (mode 0600, in a folder of mode
0700), the way Jupyter does; the CLI, run by the same user, finds it there by itself. So
another user of the machine, who cannot read the file, cannot drive the API
(docs/api.md#who-may-change-things).

Standard library only: the CLI client imports this, and must stay light.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

RUNTIME_ENV = "SUPERVISOR_RUNTIME_DIR"


class TokenFileError(Exception):
    """The runtime folder or a token file cannot be used safely."""


def runtime_dir() -> Path:
    """``$SUPERVISOR_RUNTIME_DIR``, else ``$XDG_RUNTIME_DIR/supervisor``, else
    ``~/.local/state/supervisor``."""
    given = os.environ.get(RUNTIME_ENV, "").strip()
    if given:
        return Path(given)
    xdg = os.environ.get("XDG_RUNTIME_DIR", "").strip()
    if xdg:
        return Path(xdg) / "supervisor"
    return Path.home() / ".local" / "state" / "supervisor"


def token_path(port: int, folder: Path | None = None) -> Path:
    """Where the supervisor serving TCP port `port` keeps its token."""
    return (folder or runtime_dir()) / f"api-{port}.token"


def private(path: Path, *, folder: bool) -> str | None:
    """Why `path` is not private to this user (owned by another uid, or open to group or
    others), or None when it is."""
    info = path.lstat()
    kind = stat.S_ISDIR if folder else stat.S_ISREG
    if not kind(info.st_mode):
        return f"{path} is not a {'folder' if folder else 'regular file'}"
    if info.st_uid != os.geteuid():
        return f"{path} belongs to uid {info.st_uid}, not to uid {os.geteuid()}"
    if info.st_mode & 0o077:
        return f"{path} has mode {stat.S_IMODE(info.st_mode):04o}: group or others can use it"
    return None


def write_token(port: int) -> tuple[Path, str]:
    """Make a token, write it for `port`, and return its path and value.

    Raises:
      TokenFileError: the folder cannot be made, or is not private to this user.
    """
    folder = runtime_dir()
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        why = private(folder, folder=True)
        if why:
            raise TokenFileError(f"cannot keep the API token there: {why} (want mode 0700)")
        token = secrets.token_urlsafe(32)
        path = token_path(port, folder)
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, f"{token}\n".encode())
        finally:
            os.close(fd)
        temporary.replace(path)
    except OSError as exc:
        raise TokenFileError(f"cannot write the API token in {folder}: {exc}") from None
    return path, token


def remove_token(path: Path, token: str) -> None:
    """Remove the token file at `path` if it still holds `token` (another supervisor may
    have taken the port since)."""
    try:
        if path.read_text().strip() == token:
            path.unlink()
    except OSError:
        pass


def read_token(port: int) -> str | None:
    """The token of this user's supervisor on TCP `port`, or None if there is none to
    trust (no file, or one another user could have written)."""
    path = token_path(port)
    try:
        if private(path, folder=False) or private(path.parent, folder=True):
            return None
        return path.read_text().strip() or None
    except (OSError, UnicodeDecodeError):
        return None
