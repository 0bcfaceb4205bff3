"""A real etcd for tests, and a TCP proxy a test can pause to cut a member off from it.

`EtcdServer` runs Debian's ``etcd`` (package etcd-server) on free loopback ports with a
data folder of its own (or in a network namespace); it can be stopped and started again
on the same ports and data, like a restart in production, or wiped (SIGKILL, data folder
deleted). With `Certs` (made by `make_certs` with ``openssl``) it serves TLS only. `PausableProxy` forwards one port to another until paused:
then it forwards nothing, in either direction, and new connections hang too, as when a
network drops packets. Both clean up everything they started in `close()`.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import attrs
import pytest

from .harness import wait_until

ETCD = shutil.which("etcd")
OPENSSL = shutil.which("openssl")
HEALTH = (
    "import sys, urllib.request; "
    "sys.exit(0 if b'true' in urllib.request.urlopen(sys.argv[1] + '/health', timeout=1).read()"
    " else 1)"
)
needs_etcd = pytest.mark.skipif(
    ETCD is None, reason="etcd is not installed: apt-get install etcd-server (.ci/run does)"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@attrs.frozen
class Certs:
    """Files of a throwaway PKI: a CA, etcd's server certificate (for 127.0.0.1 and the
    `hosts` given), a client certificate signed by that CA, and a second CA nobody uses."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def make_certs(folder: Path, hosts: tuple[str, ...] = ()) -> Certs:
    """Make the certificates of `Certs` in `folder` with the ``openssl`` command."""
    assert OPENSSL is not None, "openssl is not installed"
    folder.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run([OPENSSL, *args], check=True, capture_output=True, cwd=folder)

    for ca in ("ca", "other-ca"):
        run(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            f"/CN={ca}",
            "-keyout",
            f"{ca}.key",
            "-out",
            f"{ca}.crt",
        )
    names = ",".join(["IP:127.0.0.1", "DNS:localhost", *(f"IP:{h}" for h in hosts)])
    # etcd's JSON gateway refuses client certificates with a CommonName (it could not pass
    # it on as the user): the client's has an organisation only; its user is etcd_user.
    subjects = {"server": "/CN=etcd-server", "client": "/O=supervisor"}
    for name, extension in (("server", f"subjectAltName={names}"), ("client", "")):
        run(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            subjects[name],
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
        )
        (folder / f"{name}.ext").write_text(extension + "\n")
        run(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            f"{name}.ext",
            "-out",
            f"{name}.crt",
        )
    return Certs(
        folder / "ca.crt",
        folder / "server.crt",
        folder / "server.key",
        folder / "client.crt",
        folder / "client.key",
        folder / "other-ca.crt",
    )


class EtcdServer:
    """One etcd member. `start()` waits until it answers.

    Args:
      data_dir: its data folder (kept across `stop()` and `start()`, gone with `wipe()`).
      tls: serve https only, to clients with a certificate of `tls.ca`.
      host: the address to listen on (inside `netns`, if given).
      netns: a network namespace to run it in (``ip netns exec``).
      also_on: more addresses it listens on, with the same port.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        tls: Certs | None = None,
        host: str = "127.0.0.1",
        netns: str | None = None,
        also_on: tuple[str, ...] = (),
    ) -> None:
        assert ETCD is not None, "etcd is not installed"
        self.data_dir = data_dir
        self.tls = tls
        self.host = host
        self.netns = netns
        self.also_on = also_on  # more addresses to listen on (same port)
        self.port = 2379 if netns else free_port()
        self.peer_port = 2380 if netns else free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.with_name(data_dir.name + ".log")

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.address}"

    def start(self, timeout: float = 15.0) -> None:
        assert self.proc is None, "etcd already running"
        peer = f"http://127.0.0.1:{self.peer_port}"
        assert ETCD is not None
        cmd = [
            ETCD,
            "--name=test",
            f"--data-dir={self.data_dir}",
            "--listen-client-urls="
            + ",".join([self.url, *(self.url.replace(self.host, h) for h in self.also_on)]),
            f"--advertise-client-urls={self.url}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=test={peer}",
        ]
        if self.tls is not None:
            cmd += [
                f"--cert-file={self.tls.server_cert}",
                f"--key-file={self.tls.server_key}",
                f"--trusted-ca-file={self.tls.ca}",
                "--client-cert-auth",
            ]
        if self.netns is not None:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        wait_until(self.healthy, timeout, f"etcd on {self.address} healthy")

    def context(self) -> ssl.SSLContext | None:
        """A client's TLS context for this etcd (None without TLS)."""
        if self.tls is None:
            return None
        context = ssl.create_default_context(cafile=str(self.tls.ca))
        context.load_cert_chain(str(self.tls.client_cert), str(self.tls.client_key))
        return context

    def healthy(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"etcd exited:\n{self.log_path.read_text()[-3000:]}")
        if self.netns is not None:
            probe = ["ip", "netns", "exec", self.netns, sys.executable, "-c", HEALTH, self.url]
            return subprocess.run(probe, capture_output=True, check=False).returncode == 0
        try:
            with urllib.request.urlopen(
                f"{self.url}/health", timeout=1, context=self.context()
            ) as answer:
                return bool(json.load(answer).get("health") == "true")
        except OSError:
            return False

    def wipe(self) -> None:
        """SIGKILL it and delete its data folder: `start()` then brings up an empty etcd."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
        shutil.rmtree(self.data_dir, ignore_errors=True)

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
