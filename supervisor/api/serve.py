"""Serving the API: the token, the socket we bound, our HTTP/1.1 server
(`supervisor.api.server`), stopped gracefully.

Two steps, so that the agents start first (docs/performance.md#what-limits-ours):
`bind_api` is light (the address, the token, the socket: standard library only) and runs
before any agent starts, so a bad address still starts nothing and clients that connect
early wait in the socket's backlog; `serve_bound` imports the HTTP stack (h11,
starlette) and serves, once the first agents are spawned.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from supervisor.api.access import (
    ApiConfigError,
    Guard,
    Listen,
    bind,
    bound_address,
    configured_token,
    parse_address,
)
from supervisor.api.tokenfile import TokenFileError, remove_token, write_token
from supervisor.logs import log
from supervisor.manifest import Settings
from supervisor.owner import Supervisor

if TYPE_CHECKING:  # the member's etcd client (httpx) loads only in cluster mode
    from supervisor.api.server import Server
    from supervisor.cluster.member import ClusterMember


class BoundApi:
    """The API's socket, bound and listening, with its token; not served yet.

    `close()` closes the socket and removes what was made for it (a unix socket's
    file, the token file); `serve_bound` does it when it ends.
    """

    def __init__(
        self, sock: socket.socket, listen: Listen, guard: Guard, made: tuple[Path, str] | None
    ) -> None:
        self.sock = sock
        self.listen = listen
        self.guard = guard
        self.made = made  # the token file we wrote, and its token

    @property
    def address(self) -> str:
        """The address actually bound (``"127.0.0.1:43125"`` for ``"127.0.0.1:0"``)."""
        return self.guard.address

    def close(self) -> None:
        self.sock.close()
        if self.listen.path is not None:
            self.listen.path.unlink(missing_ok=True)
        if self.made is not None:
            remove_token(*self.made)
            self.made = None


def bind_api(settings: Settings, address: str) -> BoundApi:
    """Bind the API's socket on `address` and settle its token (see `serve_api`).

    Raises:
      ApiConfigError: a bad address, an unusable token file, or the address cannot be
        bound.
    """
    listen = parse_address(address)
    token = configured_token(settings)
    configured = token is not None
    sock = bind(listen, address, private=not configured)
    made: tuple[Path, str] | None = None
    try:
        bound = bound_address(sock)
        if token is None and listen.path is None:
            try:
                made = write_token(sock.getsockname()[1])
            except TokenFileError as exc:
                raise ApiConfigError(str(exc)) from None
            token = made[1]
    except BaseException:
        BoundApi(sock, listen, Guard(token=None, configured=False, address=address), made).close()
        raise
    return BoundApi(sock, listen, Guard(token=token, configured=configured, address=bound), made)


async def serve_api(
    sup: Supervisor,
    address: str,
    cluster: ClusterMember | None = None,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the control API for `sup` on `address` until cancelled.

    With `cluster` (this supervisor's membership), loads and unloads go to the
    cluster's shared overlay, and ``GET /cluster`` is served (`supervisor.api.cluster`).

    With no token set, a TCP API makes one and writes it where only this user can read it
    (`supervisor.api.tokenfile`), removed again on exit; a unix socket gets mode 0600.

    Calls ``task_status.started(bound)`` once listening, with the address actually bound
    in the same syntax (``"127.0.0.1:43125"`` for ``"127.0.0.1:0"``, ``"unix:/run/s.sock"``).

    Cancelling it shuts down gracefully: it stops accepting connections, gives requests
    in flight up to `GRACE` seconds, removes its unix socket, then lets the cancellation
    propagate.

    Raises:
      ApiConfigError: before `started`: a bad address, an unusable token file, or the
        address cannot be bound.
    """
    api = bind_api(sup.manifest.settings, address)
    await serve_bound(sup, api, cluster, task_status=task_status)


async def serve_bound(
    sup: Supervisor,
    api: BoundApi,
    cluster: ClusterMember | None = None,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the API on the socket `bind_api` bound, until cancelled (see `serve_api`);
    close it at the end."""
    try:
        # The HTTP stack: imported here, after the agents were started (see above).
        from supervisor.api.app import build_app
        from supervisor.api.server import GRACE, Server

        server = Server(build_app(sup, api.guard, cluster), api.sock)
        stop = trio.Event()
        # The server runs shielded so that a cancel reaches it as a graceful stop
        # (`stop`), not as a cancellation of every request in flight; the shield's
        # deadline bounds it.
        shield = trio.CancelScope(shield=True)
        async with trio.open_nursery() as nursery:
            await nursery.start(_shielded, server, stop, shield)
            try:
                where = f", token in {api.made[0]}" if api.made else ""
                log.info("API on %s (%s%s)", api.address, api.guard.note(), where)
                task_status.started(api.address)
                return_free_heap()  # the start is done
                await trio.sleep_forever()
            finally:
                stop.set()
                shield.deadline = trio.current_time() + GRACE + 1.0
    finally:
        api.close()


def return_free_heap() -> None:
    """Give the C heap's free pages back to the system: the start (the manifest's
    parse, the spawns, the HTTP stack's import) leaves some that ``free`` keeps (~0.1
    MiB at 500 agents). glibc's ``malloc_trim``, through ctypes (imported by trio)."""
    import ctypes

    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim this way
        pass


async def _shielded(
    server: Server,
    stop: trio.Event,
    shield: trio.CancelScope,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    with shield:
        await server.serve(stop, task_status=task_status)
