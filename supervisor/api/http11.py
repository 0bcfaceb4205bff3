"""One API connection: HTTP/1.1 (h11's state machine) to the ASGI app, and back.

The server (`supervisor.api.server`) accepts connections and bounds how many; this module
serves one, request after request (keep-alive, pipelining), in the connection's own task:

- **The head** must arrive within `head_timeout` of the connection or of the previous
  answer, and fit in `MAX_HEAD` bytes. A malformed one is answered 400 (431 when too
  large) with a JSON ``{"error": ...}`` saying why, and the connection is closed. The
  HTTP/2 preface closes the connection; ``Upgrade: h2c`` is ignored (answered in
  HTTP/1.1, as a server may).
- **The body** is read only when the app asks for it (``receive``), straight from the
  socket: nothing is queued, so an app that reads 1 MiB of a larger body and answers
  413 has read 1 MiB (its limits: `supervisor.api.body`). A ``100 Continue`` goes out
  when the app first reads a body the client holds back for it.
- **The answer** goes out as the app sends it (streams too: SSE). Every send is bounded
  by `write_timeout`: a client that does not read is dropped, and the app's next
  ``receive`` says ``http.disconnect`` at once, which ends its stream. Once the answer
  is complete, or the client closed its side, ``receive`` says ``http.disconnect``.
- The connection is kept for the next request when both sides are done; a body the app
  left unread closes it (unless it already arrived whole).

`stop()` makes the connection end after the answer in flight (``Connection: close``),
and at once if it is waiting for a request.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any
from urllib.parse import unquote

import h11
import trio

from supervisor.logs import log

MAX_HEAD = 16 * 1024  # bytes of a request's head (line and headers); more: 431
MAX_PIPELINED = 64 * 1024  # bytes read ahead of the next request while answering one
READ_SIZE = 64 * 1024
DISCONNECT = {"type": "http.disconnect"}
ASGI = {"version": "3.0", "spec_version": "2.1"}  # 2.1: apps watch for http.disconnect

Message = dict[str, Any]


class Http11Connection:
    """Serves the ASGI `app` on `stream` until either side closes (see the module)."""

    def __init__(
        self,
        app: Any,
        stream: trio.SocketStream,
        *,
        head_timeout: float,
        write_timeout: float,
    ) -> None:
        self.app = app
        self.stream = stream
        self.head_timeout = head_timeout
        self.write_timeout = write_timeout
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self.client, self.server = _addresses(stream.socket)
        self.reading = trio.Lock()
        self.read_scope: trio.CancelScope | None = None  # a receive waiting on the socket
        self.idle_scope: trio.CancelScope | None = None  # waiting for a request's head
        self.stopping = False
        self.eof = False  # the client closed its side
        self.broken = False  # the socket is closed: nothing more can be sent
        self.closing = False  # end the connection after this answer
        self._new_request()

    def _new_request(self) -> None:
        self.head: h11.Response | None = None  # the answer's head, sent with its first body
        self.started = False  # the app sent http.response.start
        self.wrote = False  # some of the answer went out
        self.done = False  # the answer is complete (or can no longer be)
        self.suppress_body = False

    def stop(self) -> None:
        """End after the answer in flight; at once if waiting for a request."""
        self.stopping = True
        if self.idle_scope is not None:
            self.idle_scope.cancel()

    async def run(self) -> None:
        """Serve requests until the connection ends; then close our side of it."""
        try:
            while await self._serve_one():
                self.h11.start_next_cycle()
                self._new_request()
        finally:
            if not self.broken:
                with trio.move_on_after(1.0):  # FIN after the answer, not a reset
                    try:
                        await self.stream.send_eof()
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                        pass

    async def _serve_one(self) -> bool:
        """One request and its answer; whether the connection can serve another."""
        request = await self._next_request()
        if request is None:
            return False
        await self._call_app(request)
        return self._reusable()

    async def _next_request(self) -> h11.Request | None:
        """The next request's head; None if the connection should end instead (the client
        went away, was too slow, sent something malformed (answered), or speaks HTTP/2)."""
        with trio.CancelScope() as idle:
            self.idle_scope = idle
            idle.deadline = trio.current_time() + self.head_timeout
            if self.stopping:
                idle.cancel()
            while True:
                try:
                    _check_head_size(self.h11.trailing_data[0])
                    event = self.h11.next_event()
                except h11.RemoteProtocolError as exc:
                    self.idle_scope = None
                    await self._refuse(exc.error_status_hint, f"malformed request: {exc}")
                    return None
                if event is h11.NEED_DATA:
                    await self._read()
                    continue
                self.idle_scope = None
                if isinstance(event, h11.Request):
                    if event.method == b"PRI" and event.target == b"*":
                        return None  # the HTTP/2 preface: no HTTP/2 here
                    return event
                return None  # ConnectionClosed
        self.idle_scope = None
        return None  # the head timeout, or stop()

    async def _call_app(self, request: h11.Request) -> None:
        method = request.method.decode("ascii").upper()
        self.suppress_body = method == "HEAD"
        path, _, query = bytes(request.target).partition(b"?")
        scope = {
            "type": "http",
            "asgi": ASGI,
            "http_version": request.http_version.decode("ascii"),
            "method": method,
            "scheme": "http",
            "path": unquote(path.decode("ascii")),
            "raw_path": path,
            "query_string": query,
            "root_path": "",
            "headers": [(bytes(name), bytes(value)) for name, value in request.headers],
            "client": self.client,
            "server": self.server,
            "state": {},
            "extensions": {},
        }
        try:
            await self.app(scope, self.receive, self.send)
        except Exception as exc:
            # After its 500 went out, Starlette raises the error again for us to log.
            log.error("API %s %s: %r", method, scope["path"], exc, exc_info=exc)
            if not self.wrote:
                await self._refuse(500, f"internal error: {exc!r}")
        if not self.done:
            if not self.wrote:
                await self._refuse(500, "internal error: the API sent no answer")
            self.closing = True  # an answer cut off: the client cannot tell where it ends
            self.done = True
        self._wake_reader()

    def _reusable(self) -> bool:
        if self.broken or self.closing or self.stopping or self.h11.our_state is not h11.DONE:
            return False
        while self.h11.their_state is h11.SEND_BODY:  # a body the app did not read:
            try:  # keep the connection only if the rest of it is already here
                event = self.h11.next_event()
            except h11.RemoteProtocolError:
                return False
            if event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
                return False
        # After the client's EOF, only the requests it sent before it are answered.
        return self.h11.their_state is h11.DONE and not (self.eof and not self.h11.trailing_data[0])

    # -- ASGI receive and send --------------------------------------------------------

    async def receive(self) -> Message:
        async with self.reading:
            while not (self.done or self.broken):
                h = self.h11
                if h.their_state is h11.SEND_BODY and h.they_are_waiting_for_100_continue:
                    await self._write(
                        h.send(h11.InformationalResponse(status_code=100, headers=[])) or b""
                    )
                    continue
                try:
                    event = h.next_event()
                except h11.RemoteProtocolError:
                    break  # a malformed body, or one cut off: no more of it
                if isinstance(event, h11.Data):
                    return {"type": "http.request", "body": bytes(event.data), "more_body": True}
                if isinstance(event, h11.EndOfMessage):
                    return {"type": "http.request", "body": b"", "more_body": False}
                if isinstance(event, h11.ConnectionClosed) or self.eof:
                    break
                # NEED_DATA: more of the body. Or the request is all here (PAUSED, or
                # NEED_DATA with nothing buffered): read on only to see the client leave.
                await self._read(ahead=h.their_state is not h11.SEND_BODY)
            return DISCONNECT

    async def _read(self, *, ahead: bool = False) -> None:
        """Read what the client sends into h11 (its end too), unless the answer ends
        first. `ahead`: the bytes are the next request's, read only to notice the client
        leaving, and only up to MAX_PIPELINED of them."""
        if self.eof:
            return
        with trio.CancelScope() as self.read_scope:
            try:
                if self.done or self.broken:
                    return
                if ahead and len(self.h11.trailing_data[0]) > MAX_PIPELINED:
                    await trio.sleep_forever()  # the answer's end wakes us
                try:
                    data = await self.stream.receive_some(READ_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    data = b""
                if not data:
                    self.eof = True
                self.h11.receive_data(data)
            finally:
                self.read_scope = None

    def _wake_reader(self) -> None:
        if self.read_scope is not None:
            self.read_scope.cancel()

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start" and not self.started:
            headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", ())]
            if self.stopping:
                headers.append((b"connection", b"close"))
            if not any(k.lower() == b"date" for k, _ in headers):
                headers.append((b"date", _date()))
            status = int(message["status"])
            self.head = h11.Response(status_code=status, headers=headers)
            self.suppress_body |= status in (204, 304)
            self.started = True
        elif kind == "http.response.body" and self.started and not self.done:
            if self.broken:
                self.done = True
                return  # the client is gone (ASGI 2.1: sends go nowhere; receive says so)
            data = b""
            if self.head is not None:
                data += self.h11.send(self.head) or b""
                self.head = None
            body = message.get("body", b"")
            if body and not self.suppress_body:
                data += self.h11.send(h11.Data(data=body)) or b""
            if not message.get("more_body", False):
                data += self.h11.send(h11.EndOfMessage()) or b""
                self.done = True
            self.wrote = True
            await self._write(data)
            if self.done:
                self._wake_reader()
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r} (started: {self.started})")

    async def _write(self, data: bytes) -> None:
        if self.broken or not data:
            return
        with trio.move_on_after(self.write_timeout):
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass  # gone
            else:
                return
        # The client went away, or read nothing for write_timeout: drop the connection.
        self.broken = True
        self._wake_reader()
        await trio.aclose_forcefully(self.stream)

    async def _refuse(self, status: int, message: str) -> None:
        """Answer `status` with ``{"error": message}`` outside h11 (whose state the
        request may have broken), and end the connection after it."""
        body = json.dumps({"error": message}).encode()
        head = (
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Internal Server Error')}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"connection: close\r\ndate: {_date().decode()}\r\n\r\n"
        )
        self.started = self.wrote = self.done = self.closing = True
        await self._write(head.encode() + body)


_REASONS = {400: "Bad Request", 413: "Content Too Large", 431: "Request Header Fields Too Large"}


def _check_head_size(buffered: bytes) -> None:
    """h11 bounds a head it is still waiting for; this bounds one that arrived whole."""
    if len(buffered) > MAX_HEAD and not re.search(b"\n\r?\n", buffered[:MAX_HEAD]):
        raise h11.RemoteProtocolError(
            f"the request's head is larger than {MAX_HEAD} bytes", error_status_hint=431
        )


def _addresses(sock: Any) -> tuple[tuple[str, int] | None, tuple[str, int] | None]:
    """(client, server) for the ASGI scope: (host, port) on TCP, None on a unix socket."""
    if sock.family == trio.socket.AF_UNIX:
        return None, None
    try:
        peer, local = sock.getpeername(), sock.getsockname()
    except OSError:
        return None, None
    return (peer[0], peer[1]), (local[0], local[1])


_last_date: tuple[int, bytes] = (0, b"")


def _date() -> bytes:
    """The ``Date`` header's value (RFC 9110), made at most once a second."""
    global _last_date
    now = int(time.time())
    if _last_date[0] != now:
        _last_date = (now, time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now)).encode())
    return _last_date[1]
