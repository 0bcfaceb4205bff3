"""The sd_notify protocol, server side: how process agents say "I am ready".

A process agent with ``ready = "notify"`` finds a unix datagram socket's path in
``$NOTIFY_SOCKET`` and sends newline-separated ``KEY=VALUE`` assignments to it, as
systemd services do (``sd_notify(3)``)::

    async with open_notify_socket("web") as sock:
        spawn(..., env={"NOTIFY_SOCKET": sock.path})
        while True:
            message = await sock.receive()
            if message.ready: ...

Each agent gets a socket of its own, and a datagram counts only if its sender is one of
the agent's own processes: the socket accepts anyone (its folder is 0711 and the socket
0666, so an agent that runs as another user, or drops privileges itself, can still
reach it, as systemd's does) and ``SO_PASSCRED`` makes the kernel attach each sender's
pid (``SCM_CREDENTIALS``), which the runner checks against the agent's processes. A
shell script's ``systemd-notify --ready`` is a short-lived grandchild; it is still
alive when its datagram is read, because it then waits on a barrier (below). With
``--no-block`` it may be gone: its message is then taken only if its pid can still be
traced to the agent.

Barriers: ``sd_notify_barrier(3)``, which Debian's ``systemd-notify`` (252) calls unless
given ``--no-block``, sends ``BARRIER=1`` with the write end of a pipe attached
(SCM_RIGHTS) and waits, up to 5 s, for every copy of that end to be closed. We close
every descriptor that arrives as soon as the datagram is read, which answers barriers
and never leaks descriptors a sender pushes at us.

The sockets live in one folder per supervisor process (``mkdtemp``, then mode 0711: it
can be traversed, not listed; removed at exit).

`relay_notifications` turns the messages into the slot's hooks (see
`supervisor.runners.Hooks`); ``MAINPID=`` and other keys are ignored.
"""

from __future__ import annotations

import array
import atexit
import itertools
import os
import shutil
import socket
import struct
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import attrs
import trio

from supervisor.health.sdwatchdog import relay_watchdog
from supervisor.logs import log
from supervisor.runners import Hooks

# systemd reads at most this much of one notification (NOTIFY_BUFFER_MAX = PIPE_BUF).
MAX_MESSAGE = 4096
# Descriptors we accept per datagram; the kernel closes any that do not fit.
MAX_FDS = 16
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_ANCILLARY = socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize) + socket.CMSG_SPACE(_UCRED.size)

_runtime_dir: str | None = None
_names = itertools.count()


@attrs.frozen
class Notification:
    """One datagram: its ``KEY=VALUE`` assignments (the last one wins for a repeated key)."""

    fields: dict[str, str]
    pid: int | None = None  # the sender's, from SCM_CREDENTIALS

    @property
    def ready(self) -> bool:
        return self.fields.get("READY") == "1"

    @property
    def status(self) -> str | None:
        return self.fields.get("STATUS")

    @property
    def stopping(self) -> bool:
        return self.fields.get("STOPPING") == "1"

    @property
    def reloading(self) -> bool:
        return self.fields.get("RELOADING") == "1"

    @property
    def extend_timeout(self) -> float | None:
        """``EXTEND_TIMEOUT_USEC=n`` in seconds, or None if absent or not a number."""
        value = self.fields.get("EXTEND_TIMEOUT_USEC", "")
        return int(value) / 1e6 if value.isascii() and value.isdigit() else None


def parse(data: bytes, pid: int | None = None) -> Notification:
    """Parse one datagram; lines that are not assignments are ignored, as systemd does."""
    fields: dict[str, str] = {}
    for line in data.decode("utf-8", errors="replace").split("\n"):
        key, sep, value = line.partition("=")
        if sep and key:
            fields[key] = value
    return Notification(fields, pid)


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
        data, ancdata, _flags, _addr = await self._sock.recvmsg(MAX_MESSAGE, _ANCILLARY)
        _close_passed_fds(ancdata)
        return parse(data, _sender(ancdata))

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
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        await sock.bind(path)
        os.chmod(path, 0o666)  # anyone may send; only the agent's processes count
        yield notify
    finally:
        notify.close()


def _sender(ancdata: list[tuple[int, int, bytes]]) -> int | None:
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid: int = _UCRED.unpack_from(data)[0]
            return pid
    return None


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
        os.chmod(_runtime_dir, 0o711)  # agents of any user reach their socket; none lists
        atexit.register(shutil.rmtree, _runtime_dir, ignore_errors=True)
    return _runtime_dir


class NotifyRelay:
    """Turns one agent's notifications into its slot's hooks.

    Args:
      hooks: the slot's.
      owns: whether a pid is one of the agent's processes; others' messages are dropped.

    While `stop_grace` is set (a stop is under way) only ``EXTEND_TIMEOUT_USEC=`` counts,
    and it moves that scope's deadline; ``STATUS=`` still shows.
    """

    def __init__(self, agent_id: str, hooks: Hooks, owns: Callable[[int], bool]) -> None:
        self._agent_id = agent_id
        self._hooks = hooks
        self._owns = owns
        self._warned = False
        self.stop_grace: trio.CancelScope | None = None

    async def run(self, notify: NotifySocket) -> None:
        """Relay until cancelled."""
        while True:
            message = await notify.receive()
            if message.pid is None or not self._owns(message.pid):
                self._foreign(message.pid)
                continue
            self.deliver(message)

    def deliver(self, message: Notification) -> None:
        hooks = self._hooks
        if message.status is not None:
            hooks.status(message.status)
        extend = message.extend_timeout
        if self.stop_grace is not None:
            if extend is not None:
                grace = self.stop_grace
                grace.deadline = max(grace.deadline, trio.current_time() + extend)
            return
        if extend is not None:
            hooks.extend_timeout(extend)
        if message.stopping:
            hooks.stopping()
            return  # whatever else it says, it is on its way out
        if message.reloading:
            hooks.reloading()
        if message.ready:
            hooks.ready()
        relay_watchdog(message.fields, hooks)

    def _foreign(self, pid: int | None) -> None:
        if not self._warned:  # once per run: a flood must not flood the log
            self._warned = True
            log.warning(
                "%s: ignored a notification from pid %s, not one of the agent's processes",
                self._agent_id,
                pid,
            )
