"""The sd_notify protocol, server side: how process agents say "I am ready".

A process agent with ``ready = "notify"`` finds a unix datagram socket's path in
``$NOTIFY_SOCKET`` and sends newline-separated ``KEY=VALUE`` assignments to it, as
systemd services do (``sd_notify(3)``)::

    async with open_notify_socket("web") as sock:
        spawn(..., env={"NOTIFY_SOCKET": sock.path})
        while True:
            message = await sock.receive()
            if message.ready: ...

Each agent gets a socket of its own, so whatever arrives on it is that agent's, whoever
sent it. Matching senders by pid would misattribute the common case of a shell script
running ``systemd-notify --ready``: the sender is a short-lived grandchild, already gone
by the time we could look it up.

Barriers: ``sd_notify_barrier(3)``, which Debian's ``systemd-notify`` (252) calls unless
given ``--no-block``, sends ``BARRIER=1`` with the write end of a pipe attached
(SCM_RIGHTS) and waits, up to 5 s, for every copy of that end to be closed. We close
every descriptor that arrives as soon as the datagram is read, which answers barriers
and never leaks descriptors a sender pushes at us.

The sockets live in one private folder per supervisor process (``mkdtemp``, mode 0700,
removed at exit), so no other user can send to them.
"""

from __future__ import annotations

import array
import atexit
import itertools
import os
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import trio

# systemd reads at most this much of one notification (NOTIFY_BUFFER_MAX = PIPE_BUF).
MAX_MESSAGE = 4096
# Descriptors we accept per datagram; the kernel closes any that do not fit.
MAX_FDS = 16

_runtime_dir: str | None = None
_names = itertools.count()


@attrs.frozen
class Notification:
    """One datagram: its ``KEY=VALUE`` assignments (the last one wins for a repeated key)."""

    fields: dict[str, str]

    @property
    def ready(self) -> bool:
        return self.fields.get("READY") == "1"

    @property
    def status(self) -> str | None:
        return self.fields.get("STATUS")


def parse(data: bytes) -> Notification:
    """Parse one datagram; lines that are not assignments are ignored, as systemd does."""
    fields: dict[str, str] = {}
    for line in data.decode("utf-8", errors="replace").split("\n"):
        key, sep, value = line.partition("=")
        if sep and key:
            fields[key] = value
    return Notification(fields)


class NotifySocket:
    """A bound datagram socket receiving one agent's notifications.

    Made by `open_notify_socket`; `path` goes into the agent's ``$NOTIFY_SOCKET``.
    """

    def __init__(self, sock: trio.socket.SocketType, path: str) -> None:
        self._sock = sock
        self.path = path

    async def receive(self) -> Notification:
        """Wait for the next datagram and return it, its descriptors already closed.

        Costs nothing while idle (the socket sits in trio's epoll set). Cancellable: a
        cancelled call consumes no datagram.
        """
        data, ancdata, _flags, _addr = await self._sock.recvmsg(
            MAX_MESSAGE, socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)
        )
        _close_passed_fds(ancdata)
        return parse(data)

    def close(self) -> None:
        """Close the socket and remove its file. Idempotent."""
        self._sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


@asynccontextmanager
async def open_notify_socket(agent_id: str) -> AsyncIterator[NotifySocket]:
    """Bind a fresh notify socket for one run of `agent_id`; close and unlink it on exit.

    The socket's name is unique for the life of this process (restarts never meet a
    stale socket) and short, whatever the agent's id, to stay inside the 108-byte limit
    of unix socket paths.
    """
    path = os.path.join(_private_dir(), f"{next(_names)}.{agent_id[:24]}")
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify = NotifySocket(sock, path)
    try:
        await sock.bind(path)
        yield notify
    finally:
        notify.close()


def _close_passed_fds(ancdata: list[tuple[int, int, bytes]]) -> None:
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds = array.array("i")
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
            for fd in fds:
                os.close(fd)


def _private_dir() -> str:
    """The folder of this process's sockets, made on first use (mkdtemp gives 0700)."""
    global _runtime_dir
    # Checked each time: a tmp cleaner may have removed an idle folder.
    if _runtime_dir is None or not os.path.isdir(_runtime_dir):
        _runtime_dir = tempfile.mkdtemp(prefix="supervisor-notify-")
        atexit.register(shutil.rmtree, _runtime_dir, ignore_errors=True)
    return _runtime_dir
