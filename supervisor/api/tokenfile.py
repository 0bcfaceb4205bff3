"""The token a supervisor makes for itself, in a file only its user can read.

With no token configured, a supervisor whose API listens on TCP makes a random token at
start and writes it to ``FOLDER/api-PORT.token`` (mode 0600, in a folder of mode 0700:
see `runtime_dirs`), the way Jupyter does; the CLI, run by the same user, finds it there by itself. So
another user of the machine, who cannot read the file, cannot drive the API
(docs/api.md#who-may-change-things).

Standard library only: the CLI client imports this, and must stay light: `read_token`
works on strings, so that the client imports no `pathlib` (nor the `urllib.parse` and
`fnmatch` it loads: 3 ms of each command); the server's side, which writes, does.
"""

from __future__ import annotations

import os
import stat

TYPE_CHECKING = False  # not `typing`'s, as in supervisor/__init__.py
if TYPE_CHECKING:
    from pathlib import Path

RUNTIME_ENV = "SUPERVISOR_RUNTIME_DIR"


class TokenFileError(Exception):
    """The runtime folder or a token file cannot be used safely."""


def runtime_dirs() -> list[Path]:
    """Where a token may be kept, in the order tried: ``$SUPERVISOR_RUNTIME_DIR`` alone
    when set; else ``$XDG_RUNTIME_DIR/supervisor``, ``~/.local/state/supervisor`` and
    ``/tmp/supervisor-UID`` (for a user with no writable home, as in a container)."""
    from pathlib import Path

    return [Path(folder) for folder in _runtime_folders()]


def _runtime_folders() -> list[str]:
    given = os.environ.get(RUNTIME_ENV, "").strip()
    if given:
        return [given]
    folders = []
    xdg = os.environ.get("XDG_RUNTIME_DIR", "").strip()
    if xdg:
        folders.append(os.path.join(xdg, "supervisor"))
    home = os.path.expanduser("~")
    if home != "~":  # else no home at all
        folders.append(os.path.join(home, ".local", "state", "supervisor"))
    folders.append(f"/tmp/supervisor-{os.geteuid()}")
    return folders


def token_path(port: int, folder: Path) -> Path:
    """Where the supervisor serving TCP port `port` keeps its token in `folder`."""
    return folder / _token_name(port)


def _token_name(port: int) -> str:
    return f"api-{port}.token"


def private(path: str | Path, *, folder: bool) -> str | None:
    """Why `path` is not private to this user (owned by another uid, or open to group or
    others), or None when it is."""
    info = os.lstat(path)
    kind = stat.S_ISDIR if folder else stat.S_ISREG
    if not kind(info.st_mode):
        return f"{path} is not a {'folder' if folder else 'regular file'}"
    if info.st_uid != os.geteuid():
        return f"{path} belongs to uid {info.st_uid}, not to uid {os.geteuid()}"
    if info.st_mode & 0o077:
        return f"{path} has mode {stat.S_IMODE(info.st_mode):04o}: group or others can use it"
    return None


def write_token(port: int) -> tuple[Path, str]:
    """Make a token, write it for `port` in the first usable runtime folder, and return
    its path and value.

    Raises:
      TokenFileError: no runtime folder can be made, or none is private to this user.
    """
    problems = []
    for folder in runtime_dirs():
        try:
            return _write_in(folder, port)
        except (OSError, TokenFileError) as exc:
            problems.append(f"{folder}: {exc}")
    raise TokenFileError(
        "cannot keep the API token anywhere private: "
        + "; ".join(problems)
        + f" (set ${RUNTIME_ENV} to a folder of mode 0700, or set a token)"
    )


def _write_in(folder: Path, port: int) -> tuple[Path, str]:
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    why = private(folder, folder=True)
    if why:
        raise TokenFileError(why)
    import secrets  # (hashlib and OpenSSL: 20 ms the CLI, which only reads tokens, skips)

    token = secrets.token_urlsafe(32)
    path = token_path(port, folder)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, f"{token}\n".encode())
    finally:
        os.close(fd)
    temporary.replace(path)
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
    trust (no file, or one that another user could have written)."""
    for folder in _runtime_folders():
        path = os.path.join(folder, _token_name(port))
        try:
            if private(path, folder=False) or private(folder, folder=True):
                continue
            with open(path, "rb") as file:
                token = file.read().decode().strip()
        except (OSError, UnicodeDecodeError):
            continue
        if token:
            return token
    return None
