"""The API's connections: HTTP/1.1 only, bounded, and walled off from the owner.

h11 parses HTTP/1.1; the accept loop and each connection's life are ours
(docs/api.md#limits): `supervisor.api.http11` serves one connection to the ASGI app.

- **No request stops the supervisor.** A connection that fails is logged and closed; the
  loop serves on, and restarts itself if it ever fails.
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

from supervisor.api.http11 import Http11Connection
from supervisor.logs import log

MAX_CONNECTIONS = 64
HEAD_TIMEOUT = 5.0  # seconds for a request's head (from the connection or the last answer)
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
    """Serves the ASGI `app` on the listening socket `sock` until `stop` is set."""

    def __init__(self, app: Any, sock: socket.socket) -> None:
        self.app = app
        self.listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        self.slots = trio.Semaphore(connection_limit())
        self.budget = _LogBudget()
        self.live: set[Http11Connection] = set()
        self.stopping = False

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
            self.stopping = True
            for connection in self.live:
                connection.stop()
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
        # The timeouts are read now, so that tests can shorten them.
        connection = Http11Connection(
            self.app, stream, head_timeout=HEAD_TIMEOUT, write_timeout=WRITE_TIMEOUT
        )
        self.live.add(connection)
        try:
            if self.stopping:
                connection.stop()
            await connection.run()
        except Exception as exc:
            self.budget.warning("API: a connection failed: %r", exc)
        finally:
            self.live.discard(connection)
            self.slots.release()
            await trio.aclose_forcefully(stream)


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
