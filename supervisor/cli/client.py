"""The CLI's HTTP client of the control API (docs/api.md#the-cli-client).

Standard library only, and the least of it: one HTTP/1.1 request per connection over a
TCP or unix socket (``Connection: close``), written and read here in a few lines, so a
command like ``supervisor status`` pays for little more than the interpreter's start.
It imports neither trio, nor the manifest model, nor httpx, nor even `http.client`
(which loads `email` and `ssl`: 20 ms, docs/performance.md#what-limits-ours), nor the
`socket` module (its enums and `selectors`: 4 ms): `_socket` and `io` do. `Api.request`
sends one request and reads the whole answer; `Api.stream` hands over the open response,
for Server-Sent Events (`sse_events`).
"""

from __future__ import annotations

import _socket
import io
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from supervisor.api.tokenfile import read_token

TYPE_CHECKING = False  # see supervisor/__init__.py: the client imports neither typing
if TYPE_CHECKING:  # nor urllib.parse (and ipaddress): 4 ms of every command
    from typing import Any, BinaryIO

DEFAULT_API = "127.0.0.1:7070"  # the manifest's default (supervisor.manifest.DEFAULT_API)
TOKEN_ENV = "SUPERVISOR_TOKEN"
EXIT_OK, EXIT_NOT_READY, EXIT_UNREACHABLE = 0, 1, 2
_MAX_HEAD = 64 * 1024  # bytes of status line and headers we read at most


class ClientError(Exception):
    """The command cannot do its job; `code` is the exit code, the message says why."""

    def __init__(self, message: str, code: int = EXIT_UNREACHABLE) -> None:
        super().__init__(message)
        self.code = code


class BadAnswer(Exception):
    """What the server sent is not HTTP/1.1 as we read it."""


def api_address(arg: str | None) -> str:
    """The API's address: `--api`, then ``$SUPERVISOR_API``, then the default."""
    return arg or os.environ.get("SUPERVISOR_API") or DEFAULT_API


def agent_path(agent_id: str, *rest: str) -> str:
    """``/agents/ID[/REST...]`` with the id quoted whole: an id never adds a path segment
    or a query (``'../reload?'`` is ``/agents/..%2Freload%3F``)."""
    return "/".join(("/agents", quote(agent_id), *rest))


_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~")


def quote(text: str) -> str:
    """`text` percent-encoded (UTF-8) but for RFC 3986's unreserved characters, as
    ``urllib.parse.quote(text, safe="")`` does."""
    return "".join(chr(b) if b in _UNRESERVED else f"%{b:02X}" for b in text.encode())


class Answer:
    """A complete answer: its status, headers and body."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        """The body as JSON; ClientError if it is not."""
        try:
            return json.loads(self.body)
        except ValueError:
            raise ClientError(f"the supervisor answered {self.status} without JSON") from None

    def error_text(self) -> str:
        """The server's ``error`` message, or the status and the start of the body."""
        try:
            return str(json.loads(self.body)["error"])
        except (ValueError, KeyError, TypeError):
            text = self.body.decode(errors="replace").strip()[:200]
            return f"HTTP {self.status}: {text}"


class Response:
    """An answer whose body is read as it arrives: `read()` all of it, or iterate its
    lines (a stream). The body is de-chunked; the connection ends with the answer."""

    def __init__(self, stream: BinaryIO) -> None:
        self._in = stream
        line = stream.readline(_MAX_HEAD)
        parts = line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise BadAnswer(f"not an HTTP/1.1 status line: {line[:80]!r}")
        self.status = int(parts[1])
        self.headers: dict[str, str] = {}
        size = len(line)
        while True:
            line = stream.readline(_MAX_HEAD)
            size += len(line)
            if not line.endswith(b"\n") or size > _MAX_HEAD:
                raise BadAnswer("the answer's head is cut off or too long")
            if line in (b"\r\n", b"\n"):
                break
            name, sep, value = line.decode("latin-1").partition(":")
            if not sep:
                raise BadAnswer(f"not a header line: {line[:80]!r}")
            self.headers[name.strip()] = value.strip()
        lower = {k.lower(): v for k, v in self.headers.items()}
        self._chunked = "chunked" in lower.get("transfer-encoding", "").lower()
        length = lower.get("content-length", "")
        self._length = int(length) if length.isdigit() else None

    def getheaders(self) -> list[tuple[str, str]]:
        return list(self.headers.items())

    def _chunks(self) -> Iterator[bytes]:
        if not self._chunked:
            if self._length is not None:
                data = self._in.read(self._length)
                if len(data) < self._length:
                    raise BadAnswer("the body is cut off")
                yield data
                return
            while data := self._in.read1(65536):  # type: ignore[attr-defined]
                yield data
            return
        while True:
            line = self._in.readline(1024)
            size = line.split(b";", 1)[0].strip()
            try:
                n = int(size, 16)
            except ValueError:
                raise BadAnswer(f"not a chunk size: {line[:80]!r}") from None
            if n == 0:
                return
            data = self._in.read(n)
            if len(data) < n or self._in.readline(1024) not in (b"\r\n", b"\n"):
                raise BadAnswer("a chunk is cut off")
            yield data

    def read(self) -> bytes:
        """The whole body."""
        return b"".join(self._chunks())

    def __iter__(self) -> Iterator[bytes]:
        """The body's lines as they arrive (each with its newline, the last maybe not)."""
        rest = b""
        for data in self._chunks():
            lines = (rest + data).split(b"\n")
            rest = lines.pop()
            for line in lines:
                yield line + b"\n"
        if rest:
            yield rest


class Api:
    """The API at `address` ("HOST:PORT", "[IPv6]:PORT" or "unix:/path").

    The token is ``$SUPERVISOR_TOKEN`` when set, else the one the supervisor made for
    itself (found by its port, readable only by its user), else none.
    """

    def __init__(self, address: str, timeout: float | None) -> None:
        self.address = address
        self.timeout = timeout
        self.token = os.environ.get(TOKEN_ENV, "").strip() or self._own_token()

    def _own_token(self) -> str | None:
        if self.address.startswith("unix:"):
            return None  # a token-less unix socket is private to its user (mode 0600)
        port = self.address.rpartition(":")[2]
        return read_token(int(port)) if port.isdigit() else None

    def _connect(self) -> tuple[_socket.socket, str]:
        """A connected socket, and the ``Host`` header for it."""
        if self.address.startswith("unix:"):
            where = self.address.removeprefix("unix:")
            return _connected(_socket.AF_UNIX, 0, where, self.timeout), "localhost"
        name, _, port = self.address.rpartition(":")
        if not name or not port.isdigit():
            raise ClientError(f"API address {self.address!r}: expected HOST:PORT or unix:/path")
        bare = name.removeprefix("[").removesuffix("]")
        host = f"[{bare}]:{port}" if ":" in bare else f"{bare}:{port}"
        # an ASCII name as bytes: getaddrinfo then needs no idna codec (1 ms to import)
        name_arg: Any = bare.encode() if bare.isascii() else bare
        error: OSError | None = None
        # socket.create_connection: each address in turn, the first that connects
        for family, _, proto, _, target in _socket.getaddrinfo(
            name_arg, int(port), 0, _socket.SOCK_STREAM
        ):
            try:
                return _connected(family, proto, target, self.timeout), host
            except OSError as exc:
                error = exc
        raise error or OSError(f"no address for {bare}")

    def _headers(self, extra: dict[str, str] | None) -> dict[str, str]:
        headers = {"Accept": "application/json", **(extra or {})}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    @contextmanager
    def stream(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> Iterator[Response]:
        """Send a request and yield the open response, its body unread (for a stream).

        Raises:
          ClientError: no supervisor answers at the address, it did not answer within
            the timeout, or it refused (401, 403, 503: a token or a shutdown).
        """
        sent = self._headers(headers)
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            sent["Content-Type"] = "application/json"
        try:
            sock, host = self._connect()
        except TimeoutError:
            raise ClientError(self._no_answer()) from None
        except OSError as exc:
            raise ClientError(self._unreachable(exc)) from None
        received = io.BufferedReader(_Received(sock))
        try:
            head = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: close"]
            head += [f"{k}: {v}" for k, v in sent.items()]
            if data is not None:
                head.append(f"Content-Length: {len(data)}")
            try:
                sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (data or b""))
                response = Response(received)
            except TimeoutError:
                raise ClientError(self._no_answer()) from None
            except (OSError, BadAnswer) as exc:
                raise ClientError(self._unreachable(exc)) from None
            if response.status in (401, 403, 421, 503):
                answer = Answer(response.status, response.headers, self._read(response))
                raise ClientError(self._refused(answer))
            yield response
        finally:
            received.close()
            sock.close()

    def _no_answer(self) -> str:
        return f"the supervisor at {self.address} did not answer within {self.timeout:g}s"

    def _unreachable(self, exc: Exception) -> str:
        return (
            f"cannot reach a supervisor at {self.address}: {exc or type(exc).__name__}\n"
            "is `supervisor run` running? Point to it with --api or $SUPERVISOR_API."
        )

    def _read(self, response: Response) -> bytes:
        try:
            return response.read()
        except TimeoutError:
            raise ClientError(self._no_answer()) from None
        except (OSError, BadAnswer) as exc:
            raise ClientError(f"the supervisor at {self.address} broke off: {exc}") from None

    def request(self, method: str, path: str, body: Any = None) -> Answer:
        """Send one request and read its whole answer (see `stream` for the errors)."""
        with self.stream(method, path, body) as response:
            return Answer(response.status, response.headers, self._read(response))

    def _refused(self, answer: Answer) -> str:
        message = f"the supervisor at {self.address} refused: {answer.error_text()}"
        if answer.status == 401 and not self.token:
            message += (
                f"\nset ${TOKEN_ENV}: only the supervisor's own user finds its token by itself"
            )
        return message


def _connected(family: int, proto: int, target: Any, timeout: float | None) -> _socket.socket:
    sock = _socket.socket(family, _socket.SOCK_STREAM, proto)
    try:
        sock.settimeout(timeout)
        sock.connect(target)
    except BaseException:
        sock.close()
        raise
    return sock


class _Received(io.RawIOBase):
    """What a socket receives, as a raw stream: `socket.makefile("rb")` without `socket`."""

    def __init__(self, sock: _socket.socket) -> None:
        self._sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self._sock.recv_into(buffer)


def fail_unless(answer: Answer, *ok: int) -> None:
    """Raise ClientError (exit 1 for 404, else 2) unless the status is one of `ok`."""
    if answer.status not in ok:
        code = EXIT_NOT_READY if answer.status == 404 else EXIT_UNREACHABLE
        raise ClientError(answer.error_text(), code)


class Event:
    """One Server-Sent Event: its ``event:`` name, ``data:`` text and ``id:``."""

    __slots__ = ("data", "event", "id")

    def __init__(self, event: str, data: str, id: str | None) -> None:
        self.event = event
        self.data = data
        self.id = id

    def __repr__(self) -> str:
        return f"Event({self.event!r}, {self.data!r}, {self.id!r})"


def sse_events(response: Response) -> Iterator[Event]:
    """The events of a ``text/event-stream`` answer, as they arrive, until it ends."""
    name, data, last_id = "message", list[str](), None
    for raw in response:
        line = raw.decode(errors="replace").rstrip("\r\n")
        if not line:
            if data:
                yield Event(name, "\n".join(data), last_id)
            name, data = "message", []
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)
        elif field == "id":
            last_id = value


def print_error(exc: ClientError) -> int:
    """Print `exc` as the one ``supervisor: ...`` line (no traceback); its exit code."""
    print(f"supervisor: {exc}", file=sys.stderr)
    return exc.code
