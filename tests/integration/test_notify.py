"""The sd_notify server: parsing, a real datagram socket, barriers with passed descriptors."""

from __future__ import annotations

import array
import os
import select
import socket
import stat

import pytest
import trio

from supervisor.runners.notify import Notification, open_notify_socket, parse


def send(path: str, message: bytes, fds: list[int] | None = None) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        ancillary = []
        if fds:
            ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
        sock.sendmsg([message], ancillary, 0, path)


def mode_of(path: str) -> int | None:
    try:
        return os.stat(path).st_mode
    except FileNotFoundError:
        return None


@pytest.mark.parametrize(
    ("data", "fields"),
    [
        (b"READY=1", {"READY": "1"}),
        (b"READY=1\nSTATUS=up: 3 workers\n", {"READY": "1", "STATUS": "up: 3 workers"}),
        (b"STATUS=a=b", {"STATUS": "a=b"}),
        (b"STATUS=one\nSTATUS=two", {"STATUS": "two"}),
        (b"garbage\n=x\nBARRIER=1", {"BARRIER": "1"}),
        (b"STATUS=\xff", {"STATUS": "\ufffd"}),
    ],
)
def test_parse(data: bytes, fields: dict[str, str]) -> None:
    assert parse(data) == Notification(fields)


def test_ready_and_status() -> None:
    assert parse(b"READY=1\nSTATUS=ok").ready
    assert parse(b"READY=1\nSTATUS=ok").status == "ok"
    assert not parse(b"READY=0").ready
    assert parse(b"READY=1").status is None


async def test_receives_datagrams_in_order() -> None:
    with trio.fail_after(5):
        async with open_notify_socket("web") as sock:
            send(sock.path, b"STATUS=starting")
            send(sock.path, b"READY=1")
            assert (await sock.receive()).status == "starting"
            assert (await sock.receive()).ready


async def test_socket_is_reachable_by_any_user_and_removed_after() -> None:
    # Its folder can be traversed, not listed; anyone may send (the runner checks who).
    async with open_notify_socket("web") as sock:
        path = sock.path
        folder_mode, socket_mode = mode_of(os.path.dirname(path)), mode_of(path)
        assert folder_mode is not None
        assert stat.S_IMODE(folder_mode) == 0o711
        assert socket_mode is not None
        assert stat.S_ISSOCK(socket_mode)
        assert stat.S_IMODE(socket_mode) == 0o666
    assert mode_of(path) is None


async def test_each_run_gets_its_own_short_path() -> None:
    long_id = "a" * 63
    async with open_notify_socket(long_id) as one, open_notify_socket(long_id) as two:
        assert one.path != two.path
        assert len(one.path.encode()) < 108


async def test_barrier_descriptors_are_closed() -> None:
    read_end, write_end = os.pipe()
    try:
        with trio.fail_after(5):
            async with open_notify_socket("web") as sock:
                send(sock.path, b"BARRIER=1", [write_end])
                os.close(write_end)  # now the socket's copy is the only one left
                message = await sock.receive()
                assert message.fields == {"BARRIER": "1"}
                # Every write end is closed: the sender's barrier wait is over.
                assert select.select([read_end], [], [], 1.0)[0] == [read_end]
                assert os.read(read_end, 1) == b""
    finally:
        os.close(read_end)


async def test_a_cancelled_receive_loses_nothing() -> None:
    with trio.fail_after(5):
        async with open_notify_socket("web") as sock:
            with trio.move_on_after(0.01):
                await sock.receive()
            send(sock.path, b"READY=1")
            assert (await sock.receive()).ready
