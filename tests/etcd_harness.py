"""A real etcd for tests, and a TCP proxy a test can pause to cut a member off from it.

`EtcdServer` runs Debian's ``etcd`` (package etcd-server) on free loopback ports with a
data folder of its own; it can be stopped and started again on the same ports and data,
like a restart in production. `PausableProxy` forwards one port to another until paused:
then it forwards nothing, in either direction, and new connections hang too, as when a
network drops packets. Both clean up everything they started in `close()`.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import threading
import urllib.request
from pathlib import Path

import pytest

from .harness import wait_until

ETCD = shutil.which("etcd")
needs_etcd = pytest.mark.skipif(
    ETCD is None, reason="etcd is not installed: apt-get install etcd-server (.ci/run does)"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class EtcdServer:
    """One etcd member on 127.0.0.1. `start()` waits until it answers."""

    def __init__(self, data_dir: Path) -> None:
        assert ETCD is not None, "etcd is not installed"
        self.data_dir = data_dir
        self.port = free_port()
        self.peer_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.with_name(data_dir.name + ".log")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def start(self, timeout: float = 15.0) -> None:
        assert self.proc is None, "etcd already running"
        peer = f"http://127.0.0.1:{self.peer_port}"
        assert ETCD is not None
        cmd = [
            ETCD,
            "--name=test",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.url}",
            f"--advertise-client-urls={self.url}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=test={peer}",
        ]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        wait_until(self.healthy, timeout, f"etcd on {self.address} healthy")

    def healthy(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"etcd exited:\n{self.log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=1) as answer:
                return bool(json.load(answer).get("health") == "true")
        except OSError:
            return False

    def stop(self) -> None:
        """Stop it (SIGTERM, then SIGKILL after 5 s); its data stays for `start()`."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def close(self) -> None:
        self.stop()

    def __enter__(self) -> EtcdServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PausableProxy:
    """Forwards 127.0.0.1:`port` to `target` ("host:port") until `pause()`d.

    Paused, it moves no bytes on existing connections and accepts new ones without
    connecting them onward: clients see silence, not errors, and must notice by their
    own timeouts. `resume()` lets everything flow again. Threads, so it works the same
    under any event loop the test runs.
    """

    def __init__(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        self.target = (host, int(port))
        self._open = threading.Event()
        self._open.set()
        self._closed = False
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True, name="proxy-accept").start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def pause(self) -> None:
        self._open.clear()

    def resume(self) -> None:
        self._open.set()

    def close(self) -> None:
        self._closed = True
        self._open.set()  # free the threads that wait to forward, so they can end
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                _close(sock)

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)
        if self._closed:
            _close(sock)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._track(client)
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        self._open.wait()
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            self._forget(client)
            return
        upstream.settimeout(None)
        self._track(upstream)
        pending = [2]  # directions still open; the last one to end closes both sockets
        lock = threading.Lock()

        def pipe(source: socket.socket, sink: socket.socket) -> None:
            try:
                while data := source.recv(65536):
                    self._open.wait()  # paused: hold the bytes, as a dead link would
                    if self._closed:
                        return
                    sink.sendall(data)
                sink.shutdown(socket.SHUT_WR)
            except OSError:
                pending[0] = 1  # broken: no clean end to wait for on the other side
            finally:
                with lock:
                    pending[0] -= 1
                    last = pending[0] <= 0
                if last:
                    self._forget(client)
                    self._forget(upstream)

        threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()
        pipe(client, upstream)

    def _forget(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)
        _close(sock)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
