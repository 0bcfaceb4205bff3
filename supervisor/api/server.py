"""The API's connections: HTTP/1.1 only, bounded, and walled off from the owner.

hypercorn parses HTTP (its h11 protocol and connection code); the accept loop and each
connection's life are ours (docs/api.md#limits), because:

- **No request stops the supervisor.** hypercorn's own loop runs every connection in one
  nursery, so one connection's exception (its HTTP/2 code raises ``KeyError`` on a DATA
  frame for a stream it has answered) ends the server and, through the owner's nursery,
  `supervisor run`. Here a connection that fails is logged and closed; the loop serves
  on, and restarts itself if it ever fails.
- **HTTP/1.1 only.** No client of this API needs HTTP/2 (the CLI, curl, Prometheus and
  browsers all speak HTTP/1.1 to it), and HTTP/2 brings its own attacks (rapid reset,
  floods of streams, HPACK bombs). The HTTP/2 preface closes the connection, and
  ``Upgrade: h2c`` is ignored (answered in HTTP/1.1, as a server may).
- **Bounded.** At most `connection_limit()` connections at once (an eighth of the file
  descriptor limit, at most `MAX_CONNECTIONS`), so a flood can never take the
  descriptors agents need to start: more wait in the kernel's backlog. A request's head
  must arrive within `HEAD_TIMEOUT` of the connection or the previous answer; a send
  blocked for `WRITE_TIMEOUT` (a client that does not read) drops the connection; bodies
  have their own deadline (`supervisor.api.body`). An accept that fails for lack of
  descriptors waits and retries.
"""

from __future__ import annotations

import errno
import math
import resource
import socket
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.trio.task_group import TaskGroup
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import AppWrapper, ConnectionState
from hypercorn.utils import parse_socket_addr

from supervisor.logs import log

MAX_CONNECTIONS = 64
HEAD_TIMEOUT = 5.0  # seconds for a request's head (hypercorn's keep-alive timeout)
WRITE_TIMEOUT = 10.0  # seconds a send may stay blocked on a client that does not read
GRACE = 3.0  # seconds requests in flight get to finish when the API stops
_SHORT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


def connection_limit() -> int:
    """Connections served at once: an eighth of the descriptor limit, 4 to 64."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(4, min(MAX_CONNECTIONS, soft // 8))


class Server:
    """Serves `app` on the listening socket `sock` until `stop` is set."""

    def __init__(self, app: AppWrapper, sock: socket.socket, config: Config) -> None:
        self.app = app
        self.config = config
        self.config.keep_alive_timeout = HEAD_TIMEOUT
        self.listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        self.context = WorkerContext(None)
        self.slots = trio.Semaphore(connection_limit())
        self.budget = _LogBudget()

    async def serve(
        self, stop: trio.Event, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Accept and serve connections until `stop`; then give those in flight `GRACE`
        seconds (idle ones close at once) and cancel the rest."""
        async with trio.open_nursery() as connections:
            async with trio.open_nursery() as accepting:
                accepting.start_soon(self._accept_forever, connections)
                task_status.started()
                await stop.wait()
                accepting.cancel_scope.cancel()
            await self.listener.aclose()  # no more connections, not even into the backlog
            await self.context.terminated.set()
            connections.cancel_scope.deadline = trio.current_time() + GRACE

    async def _accept_forever(self, connections: trio.Nursery) -> None:
        while True:
            try:
                await self._accept(connections)
            except Exception as exc:  # a bug here must not end the API: log, serve on
                log.exception("API: the accept loop failed (%r); restarting it", exc)
                await trio.sleep(1.0)

    async def _accept(self, connections: trio.Nursery) -> None:
        while True:
            await self.slots.acquire()
            try:
                stream = await self.listener.accept()
            except OSError as exc:
                self.slots.release()
                if exc.errno not in _SHORT_OF_RESOURCES:
                    raise
                self.budget.warning("API: cannot accept a connection (%s); retrying", exc)
                await trio.sleep(0.1)
                continue
            connections.start_soon(self._connection, stream)

    async def _connection(self, stream: trio.SocketStream) -> None:
        try:
            state = ConnectionState({})
            bounded: Any = _Bounded(stream)  # hypercorn types it as an SSLStream
            await _Connection(self.app, self.config, self.context, state, bounded)
        except* Exception as failed:
            self.budget.warning("API: a connection failed: %r", failed.exceptions[0])
        finally:
            self.slots.release()
            await trio.aclose_forcefully(stream)


class _Http11(H11Protocol):
    """hypercorn's HTTP/1.1, with no way into HTTP/2."""

    async def _check_protocol(self, event: Any) -> None:
        if event.method == b"PRI" and event.target == b"*":
            raise _Http2Refused  # the HTTP/2 preface: close the connection
        # ``Upgrade: h2c`` is not acted on: the request is answered in HTTP/1.1.


class _Http2Refused(Exception):
    """A client opened with the HTTP/2 preface."""


class _Connection(TCPServer):
    """hypercorn's connection, speaking `_Http11` over a plain socket stream."""

    async def run(self) -> None:
        sock = self.stream.socket
        try:
            await self._serve(sock)
        except* (OSError, _Http2Refused):
            pass  # the client went away, or opened with HTTP/2
        finally:
            await self._close()

    async def _serve(self, sock: Any) -> None:
        client = parse_socket_addr(sock.family, sock.getpeername())
        server = parse_socket_addr(sock.family, sock.getsockname())
        async with TaskGroup() as task_group:
            self._task_group = task_group
            self.protocol = _Http11(  # type: ignore[assignment]
                self.app,
                self.config,
                self.context,
                task_group,
                ConnectionState(self.state),
                False,
                client,
                server,
                self.protocol_send,
            )
            await self.protocol.initiate()
            await self.idle_task.restart(self._task_group, self._idle_timeout)
            await self._read_data()
            await self.idle_task.stop()  # the client is gone: do not hold its slot 5 s more


class _Bounded(trio.abc.HalfCloseableStream):
    """A socket stream whose sends give up after `WRITE_TIMEOUT`, as a broken connection."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.socket = stream.socket

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        with trio.move_on_after(WRITE_TIMEOUT):
            await self.stream.send_all(data)
            return
        await trio.aclose_forcefully(self.stream)  # and hypercorn's reader with it
        raise trio.BrokenResourceError(f"the client read nothing for {WRITE_TIMEOUT:g}s")

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.stream.receive_some(max_bytes)

    async def send_eof(self) -> None:
        await self.stream.send_eof()

    async def aclose(self) -> None:
        await self.stream.aclose()


class _LogBudget:
    """At most one warning per `every` seconds: a client failing in a loop cannot flood
    the log. The lines left out are counted in the next one."""

    def __init__(self, every: float = 10.0) -> None:
        self.every = every
        self.next = -math.inf
        self.skipped = 0

    def warning(self, message: str, *args: object) -> None:
        now = trio.current_time()
        if now < self.next:
            self.skipped += 1
            return
        if self.skipped:
            message += f" ({self.skipped} more like it in the last {self.every:g}s)"
        log.warning(message, *args)
        self.next, self.skipped = now + self.every, 0
