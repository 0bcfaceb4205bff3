"""The CLI's HTTP client of the control API (docs/api.md#the-cli-client).

Standard library only (`http.client` over TCP or a unix socket): a command like
``supervisor status`` answers in tens of milliseconds because it imports neither trio,
nor the manifest model, nor httpx. `Api.request` sends one request and reads the whole
answer; `Api.stream` hands over the open response, for Server-Sent Events (`sse_events`).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from supervisor.api.tokenfile import read_token

DEFAULT_API = "127.0.0.1:7070"  # the manifest's default (supervisor.manifest.DEFAULT_API)
TOKEN_ENV = "SUPERVISOR_TOKEN"
EXIT_OK, EXIT_NOT_READY, EXIT_UNREACHABLE = 0, 1, 2


class ClientError(Exception):
    """The command cannot do its job; `code` is the exit code, the message says why."""

    def __init__(self, message: str, code: int = EXIT_UNREACHABLE) -> None:
        super().__init__(message)
        self.code = code


def api_address(arg: str | None) -> str:
    """The API's address: `--api`, then ``$SUPERVISOR_API``, then the default."""
    return arg or os.environ.get("SUPERVISOR_API") or DEFAULT_API


def agent_path(agent_id: str, *rest: str) -> str:
    """``/agents/ID[/REST...]`` with the id quoted whole: an id never adds a path segment
    or a query (``'../reload?'`` is ``/agents/..%2Freload%3F``)."""
    return "/".join(("/agents", quote(agent_id, safe=""), *rest))


@dataclass(frozen=True)
class Answer:
    """A complete answer: its status, headers and body."""

    status: int
    headers: dict[str, str]
    body: bytes

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


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


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

    def _connection(self) -> http.client.HTTPConnection:
        if self.address.startswith("unix:"):
            return _UnixConnection(self.address.removeprefix("unix:"), self.timeout)
        host, _, port = self.address.rpartition(":")
        if not host or not port.isdigit():
            raise ClientError(f"API address {self.address!r}: expected HOST:PORT or unix:/path")
        return http.client.HTTPConnection(
            host.removeprefix("[").removesuffix("]"), int(port), timeout=self.timeout
        )

    def _headers(self, extra: dict[str, str] | None) -> dict[str, str]:
        headers = {"Accept": "application/json", **(extra or {})}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    @contextmanager
    def stream(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> Iterator[http.client.HTTPResponse]:
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
        connection = self._connection()
        try:
            try:
                connection.request(method, path, body=data, headers=sent)
                response = connection.getresponse()
            except TimeoutError:
                raise ClientError(
                    f"the supervisor at {self.address} did not answer within {self.timeout:g}s"
                ) from None
            except (OSError, http.client.HTTPException) as exc:
                raise ClientError(
                    f"cannot reach a supervisor at {self.address}: {exc or type(exc).__name__}\n"
                    "is `supervisor run` running? Point to it with --api or $SUPERVISOR_API."
                ) from None
            if response.status in (401, 403, 421, 503):
                answer = Answer(response.status, dict(response.getheaders()), response.read())
                raise ClientError(self._refused(answer))
            yield response
        finally:
            connection.close()

    def request(self, method: str, path: str, body: Any = None) -> Answer:
        """Send one request and read its whole answer (see `stream` for the errors)."""
        with self.stream(method, path, body) as response:
            try:
                data = response.read()
            except (OSError, http.client.HTTPException) as exc:
                raise ClientError(f"the supervisor at {self.address} broke off: {exc}") from None
            return Answer(response.status, dict(response.getheaders()), data)

    def _refused(self, answer: Answer) -> str:
        message = f"the supervisor at {self.address} refused: {answer.error_text()}"
        if answer.status == 401 and not self.token:
            message += (
                f"\nset ${TOKEN_ENV}: only the supervisor's own user finds its token by itself"
            )
        return message


def fail_unless(answer: Answer, *ok: int) -> None:
    """Raise ClientError (exit 1 for 404, else 2) unless the status is one of `ok`."""
    if answer.status not in ok:
        code = EXIT_NOT_READY if answer.status == 404 else EXIT_UNREACHABLE
        raise ClientError(answer.error_text(), code)


@dataclass(frozen=True)
class Event:
    """One Server-Sent Event: its ``event:`` name, ``data:`` text and ``id:``."""

    event: str
    data: str
    id: str | None


def sse_events(response: http.client.HTTPResponse) -> Iterator[Event]:
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
