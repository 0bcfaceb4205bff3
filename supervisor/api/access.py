"""Where the control API listens, and who may use it (docs/api.md#who-may-do-what).

The token: the one the user set (``$SUPERVISOR_TOKEN`` or `api_token_file`, refused when
others can read the file), else, on TCP, one the supervisor makes at start in a file
only its user can read (`supervisor.api.tokenfile`), which the CLI finds by itself. A
unix socket with no token set gets mode 0600 instead. `Guard` checks the token;
`supervisor.api.rules` applies it, with the CSRF and DNS-rebinding rules, to every
request.

So where the API listens is part of its security, and lives here too: parsing the
address, deciding whether it is loopback, and binding the socket (clearly failing, and
replacing a unix socket left behind by a supervisor that is gone).
"""

from __future__ import annotations

import errno
import hmac
import ipaddress
import os
import socket
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from supervisor.logs import log
from supervisor.manifest import Settings

if TYPE_CHECKING:  # binding comes before the HTTP stack is imported (`supervisor.api.serve`)
    from starlette.requests import Request

TOKEN_ENV = "SUPERVISOR_TOKEN"
BACKLOG = 128  # connections the kernel queues before we accept them


class ApiConfigError(Exception):
    """The API cannot start: a bad address, an unreadable token file, a failed bind."""


# -- where it listens ---------------------------------------------------------------


@attrs.frozen
class Listen:
    """Where to listen: a unix socket's `path`, or `host` and `port`; and whether only
    local clients can reach it (loopback or a unix socket)."""

    local: bool
    path: Path | None = None
    host: str = ""
    port: int = 0


def parse_address(address: str) -> Listen:
    """Parse ``"HOST:PORT"``, ``"[IPv6]:PORT"`` or ``"unix:/path"``.

    Raises:
      ApiConfigError: the address is not one of those forms.
    """
    if address.startswith("unix:"):
        path = address.removeprefix("unix:")
        if not path:
            raise ApiConfigError(f"API address {address!r}: a unix socket needs a path")
        return Listen(local=True, path=Path(path))
    host, sep, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ApiConfigError(
            f"API address {address!r}: expected HOST:PORT (like 127.0.0.1:7070), "
            'unix:/path/to.sock, or "" for no API'
        )
    return Listen(local=is_loopback(host), host=host, port=int(port))


def is_loopback(host: str) -> bool:
    """Whether `host` only accepts local connections. Other host names count as not:
    we would have to trust the resolver to say otherwise."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(listen: Listen, address: str, *, private: bool = False) -> socket.socket:
    """A listening, non-blocking socket for `listen`.

    A unix socket file left by a supervisor that is gone is replaced; one that still
    answers is not. A `private` unix socket gets mode 0600: only this user (and root)
    can connect.

    Raises:
      ApiConfigError: the address cannot be bound (in use, no permission, no such host).
    """
    try:
        return _listening_socket(listen, private)
    except OSError as exc:
        raise ApiConfigError(f"API address {address}: cannot listen: {exc}") from None


def _listening_socket(listen: Listen, private: bool) -> socket.socket:
    target: Any
    if listen.path is not None:
        _remove_stale_socket(listen.path)
        family, target = socket.AF_UNIX, str(listen.path)
    else:
        family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
        target = (listen.host, listen.port)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family != socket.AF_UNIX:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(target)
        if family == socket.AF_UNIX and private:
            os.chmod(target, 0o600)  # before listen(): nobody else ever connects
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _remove_stale_socket(path: Path) -> None:
    if not path.is_socket():
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except ConnectionRefusedError:
            path.unlink()  # nobody listens: left behind by a supervisor that was killed
            return
    raise OSError(errno.EADDRINUSE, "another process answers on this socket")


def bound_address(sock: socket.socket) -> str:
    """The address `sock` is bound to, in the syntax `parse_address` reads."""
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return f"unix:{name}"
    if sock.family == socket.AF_INET6:
        return f"[{name[0]}]:{name[1]}"
    return f"{name[0]}:{name[1]}"


# -- who may do things -------------------------------------------------------------


def configured_token(settings: Settings) -> str | None:
    """The token the user set: ``$SUPERVISOR_TOKEN`` if set and not empty, else the
    content of `api_token_file` (stripped), else None.

    Raises:
      ApiConfigError: the token file cannot be read, holds only whitespace, or others
        than its owner and group can read or write it.
    """
    token = os.environ.get(TOKEN_ENV, "").strip()
    if token:
        return token
    path = settings.api_token_file
    if path is None:
        return None
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o007:
            raise ApiConfigError(
                f"api_token_file {path}: others can use it (mode {mode:04o}): "
                f"run `chmod 600 {path}` (or 640 for a group; Kubernetes: defaultMode 0400)"
            )
        if mode & 0o070:
            log.warning(
                "api_token_file %s: its group can read it (mode %04o); every member of "
                "the group can drive the API",
                path,
                mode,
            )
        token = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ApiConfigError(f"api_token_file {path}: cannot read it: {exc}") from None
    if not token:
        raise ApiConfigError(f"api_token_file {path}: the file is empty")
    return token


@attrs.frozen
class Guard:
    """Who may use the API (docs/api.md#who-may-do-what).

    `token` is needed by every route but the public ones (`supervisor.api.rules`); it is
    None only on a unix socket with no token set, which only its user can open (mode
    0600). `configured` says the user set the token: only then are requests for other
    ``Host`` names than loopback served.
    """

    token: str | None
    configured: bool
    address: str

    def check(self, request: Request) -> None:
        """Raises ApiError (401, 403) unless `request` carries the token."""
        self.check_authorization(request.headers.get("authorization", ""))

    def check_authorization(self, value: str) -> None:
        """Raises ApiError (401, 403) unless ``Authorization`` `value` holds the token."""
        if self.token is None:
            return
        from supervisor.api.errors import ApiError  # (the HTTP stack: loaded by then)

        scheme, _, given = value.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise ApiError(
                401,
                "this route needs Authorization: Bearer <token>",
                headers={"WWW-Authenticate": 'Bearer realm="supervisor"'},
            )
        # Headers arrive as latin-1 text; compare the bytes as sent, in constant time.
        if not hmac.compare_digest(given.strip().encode("latin-1"), self.token.encode()):
            raise ApiError(403, "wrong token")

    def note(self) -> str:
        """Who may use the API, for the line that says where it listens."""
        if self.token is None:
            return "no token: a socket only this user can open"
        if self.configured:
            return "requests need the token"
        return "requests need the token made for this user; loopback names only"
