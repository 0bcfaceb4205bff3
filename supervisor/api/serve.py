"""Serving the API: hypercorn's trio worker on a socket we bound, stopped gracefully."""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING

import trio
from hypercorn.config import Config, Sockets
from hypercorn.trio.run import worker_serve
from hypercorn.utils import wrap_app
from starlette.types import ASGIApp

from supervisor.api.access import Guard, api_token, bind, bound_address, parse_address
from supervisor.api.app import build_app
from supervisor.logs import log
from supervisor.owner import Supervisor

if TYPE_CHECKING:  # the member's etcd client (httpx) loads only in cluster mode
    from supervisor.cluster.member import ClusterMember

GRACE = 3.0  # seconds requests in flight get to finish when the API stops

# hypercorn's own messages ("Running on ...") repeat ours; keep its warnings and errors.
_http_log = logging.getLogger("supervisor.http")
_http_log.setLevel(logging.WARNING)


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

    Calls ``task_status.started(bound)`` once listening, with the address actually bound
    in the same syntax (``"127.0.0.1:43125"`` for ``"127.0.0.1:0"``, ``"unix:/run/s.sock"``).

    Cancelling it shuts down gracefully: it stops accepting connections, gives requests
    in flight up to `GRACE` seconds, removes its unix socket, then lets the cancellation
    propagate.

    Raises:
      ApiConfigError: before `started`: a bad address, an unreadable token file, or the
        address cannot be bound.
    """
    listen = parse_address(address)
    guard = Guard(token=api_token(sup.manifest.settings), local=listen.local, address=address)
    app = build_app(sup, guard, cluster)
    sock = bind(listen, address)
    stop = trio.Event()
    # The server runs shielded so that a cancel reaches it as a graceful stop (`stop`),
    # not as a cancellation of every request in flight; the shield's deadline bounds it.
    shield = trio.CancelScope(shield=True)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(_serve, app, sock, stop, shield)
            try:
                bound = bound_address(sock)
                log.info("API on %s (%s)", bound, guard.note())
                task_status.started(bound)
                await trio.sleep_forever()
            finally:
                stop.set()
                shield.deadline = trio.current_time() + GRACE + 1.0
    finally:
        sock.close()
        if listen.path is not None:
            listen.path.unlink(missing_ok=True)


async def _serve(
    app: ASGIApp,
    sock: socket.socket,
    stop: trio.Event,
    shield: trio.CancelScope,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """hypercorn's trio worker on `sock`, until `stop` is set or `shield` runs out.

    (`hypercorn.trio.serve` binds its own sockets; binding here first keeps a failed
    bind a plain error, and the socket ours to close.)
    """
    config = Config()
    config.errorlog = _http_log
    config.accesslog = None
    config.graceful_timeout = GRACE
    sockets = Sockets(secure_sockets=[], insecure_sockets=[sock], quic_sockets=[])
    with shield:
        await worker_serve(
            wrap_app(app, config.wsgi_max_body_size, "asgi"),  # type: ignore[arg-type]
            config,
            sockets=sockets,
            shutdown_trigger=stop.wait,
            task_status=task_status,
        )
