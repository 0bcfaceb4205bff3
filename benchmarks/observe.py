"""What watching costs (issue 16) and a flood of output (issue 12), in `just bench`'s table.

Two sessions of ours per round, run by `run.py` after the in-process round:

- ``reload``: N in-process agents (``--inproc``), then three 10 % reloads, each of a
  different tenth (1,000 restarts at N = 10,000): with nobody on ``GET /events``, with a
  client reading it as fast as it can, with a client that never reads (its window full from
  the snapshot on, dropped by the send timeout). Each client is connected and its snapshot
  built (the reader has received it; the stuck one's first bytes have arrived) before the
  reload, so the snapshot's cost is not in the reload's figure. The order rotates each round. Each figure is
  the ``POST /reload`` answer, which comes once the reload has converged. The reader also
  gives how many events it received for its reload and whether it was cut off.
- ``flood``: `FLOOD_AGENTS` process agents running ``yes``, the supervisor's stdout a file:
  its peak RSS (sampled from /proc every 0.1 s) next to the bound tests/e2e/test_output_flood.py
  holds it to, its CPU (% of one core, from /proc's utime + stime), the lines per second it
  wrote to stdout and the lines per second it dropped (``/metrics``), and the slowest
  ``/healthz`` answer meanwhile.

Only the standard library; a client of ``/events`` is a thread with a raw socket.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import socket
import sys
import threading
import time
from typing import Any

import health
import peers
import procfs

FLOOD_AGENTS = 10
FLOOD_BOUND_MIB = 96.0  # tests/e2e/test_output_flood.py (docs/operations.md, "A flood of output")
MODES = ("none", "reading", "stuck")
_TICKS = os.sysconf("SC_CLK_TCK")

# (key, label, unit, target), turned into run.py's rows; "{}" in a label is --inproc
ROWS = [
    ("obs_reload_none", "reload 10% of {} in-process, no /events client", "s"),
    ("obs_reload_reading", "  the same, a client reading /events", "s"),
    ("obs_reload_stuck", "  the same, a client that never reads", "s"),
    ("obs_reader_events", "  events the reading client got", "count"),
    ("obs_reader_cutoff", "  reading client cut off (1 = yes)", "count"),
    ("flood_rss_mib", f"flood: {FLOOD_AGENTS} agents run `yes`: peak RSS", "MiB", "< 96 MiB"),
    ("flood_cpu_percent", "  supervisor CPU (% of one core)", "%"),
    ("flood_lines_per_s", "  lines written to stdout per second", "/s"),
    ("flood_dropped_per_s", "  lines dropped per second", "/s"),
    ("flood_healthz_ms", "  slowest /healthz meanwhile", "ms"),
]


def measure(bench: Any, ours: peers.Ours, round_index: int) -> None:
    """One round of both sessions, recorded into `bench` (run.py's `Bench`)."""
    count, seconds = bench.args.inproc, 3.0 if bench.args.quick else 15.0
    sessions = [("flood", lambda: flood_session(ours, seconds))]
    if count:
        sessions.insert(0, ("reload, /events", lambda: reload_session(ours, count, round_index)))
    for name, session in sessions:
        bench_log(f"  ours {name} ...")
        try:
            values = session()
        except Exception as e:
            bench.errors["ours"].append(f"{name}: {type(e).__name__}: {e}")
            bench_log(f"  ours {name}: {type(e).__name__}: {e}")
            continue
        finally:
            ours.kill()
        for key, value in values.items():
            bench.record(key, "ours", value)
        bench_log(f"  ours {name}: " + ", ".join(f"{k}={v:.4g}" for k, v in values.items()))


def targets(med: dict[str, dict[str, float]]) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) for run.py's list of targets."""
    rss = med.get("flood_rss_mib", {}).get("ours")
    if rss is None:
        return []
    return [
        (
            f"flood of {FLOOD_AGENTS} `yes` agents: supervisor RSS < {FLOOD_BOUND_MIB:g} MiB",
            f"{rss:.1f} MiB",
            rss < FLOOD_BOUND_MIB,
        )
    ]


def bench_log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- reload with clients of /events ------------------------------------------------------


def reload_session(ours: peers.Ours, count: int, round_index: int) -> dict[str, float]:
    module = "bench_idle_agent"
    ours.prepare(f"observe-{count}", {})
    shutil.copy(peers.BENCH / "agents" / "idle.py", ours.dir / f"{module}.py")
    health.write_manifest(ours, count, module, "")
    ours.launch()
    peers.wait_until(lambda: _ready(ours), timeout=300, interval=0.05)
    time.sleep(1.0)
    k = round_index % len(MODES)
    out: dict[str, float] = {}
    for gen, mode in enumerate(MODES[k:] + MODES[:k], start=1):
        health.write_manifest(ours, count, module, "", gen=gen)
        client = None if mode == "none" else Subscriber(ours.port, read=mode == "reading")
        try:
            if client is not None:
                client.start()
                if not client.ready.wait(30):
                    raise RuntimeError(f"the {mode} client of /events never connected")
            t = time.perf_counter()
            status, body = peers.request(ours.port, "POST", "/reload", timeout=300)
            out[f"obs_reload_{mode}"] = time.perf_counter() - t
            if status != 200:
                raise RuntimeError(f"POST /reload answered {status}: {str(body)[:200]}")
            if client is not None and client.read:
                client.reloaded.wait(60)
                out["obs_reader_events"] = float(client.events_since_snapshot)
                out["obs_reader_cutoff"] = float(client.cutoff)
        finally:
            if client is not None:
                client.close()
    return out


def _ready(ours: peers.Ours) -> bool:
    if ours.failed():
        raise RuntimeError(f"ours failed: {ours.failed()}")
    with contextlib.suppress(OSError):
        return peers.request(ours.port, "GET", "/readyz", timeout=5)[0] == 200
    return False


class Subscriber(threading.Thread):
    """A client of ``GET /events``: reads and counts events, or never reads at all."""

    def __init__(self, port: int, read: bool) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.read = read
        self.ready = threading.Event()  # reading: the snapshot arrived; stuck: asked
        self.reloaded = threading.Event()  # the reload event, or the cut-off, arrived
        self.events_since_snapshot = 0
        self.cutoff = False
        self.sock = socket.socket()
        if not read:  # a small window, full from the first events on
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)

    def run(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.connect(("127.0.0.1", self.port))
            token = peers.read_token(self.port)
            auth = f"Authorization: Bearer {token}\r\n" if token else ""
            host = f"Host: 127.0.0.1:{self.port}\r\n"
            self.sock.sendall(f"GET /events HTTP/1.1\r\n{host}{auth}\r\n".encode())
            if not self.read:
                # Wait for the snapshot's first bytes (it is built whole before they are
                # sent) by peeking: nothing is read, the socket stays full.
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    select.select([self.sock], [], [], 1)
                    if b"event: snapshot" in self.sock.recv(4096, socket.MSG_PEEK):
                        break
                    time.sleep(0.01)
                self.ready.set()
                return
            self._read()

    def _read(self) -> None:
        rest = b""
        while chunk := self.sock.recv(1 << 20):
            lines = (rest + chunk).split(b"\n")
            rest = lines.pop()
            for line in lines:
                if not line.startswith(b"event: "):
                    continue
                kind = line[7:].strip()
                if kind == b"snapshot":
                    self.ready.set()
                    continue
                self.events_since_snapshot += 1
                if kind == b"cutoff":
                    self.cutoff = True
                if kind in (b"reload", b"cutoff"):
                    self.reloaded.set()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.join(10)


# -- a flood of output ----------------------------------------------------------------


def flood_session(ours: peers.Ours, seconds: float) -> dict[str, float]:
    ours.prepare("flood", {})
    agents = "".join(f'[agents.yes{i}]\ncommand = ["yes"]\n' for i in range(FLOOD_AGENTS))
    ours.manifest.write_text(ours.header() + agents)
    ours.launch()
    peers.wait_until(lambda: _ready(ours), timeout=60, interval=0.05)
    pid = ours.roots()[0]
    time.sleep(1.0)  # the agents are printing
    start_size, start_dropped = ours.log.stat().st_size, _dropped(ours.port)
    start_ticks, t0 = _ticks(pid), time.perf_counter()
    peak, slowest, next_probe = 0, 0.0, t0
    while (now := time.perf_counter()) < t0 + seconds:
        peak = max(peak, procfs.rss_kib(pid))
        if now >= next_probe:
            status, _ = peers.request(ours.port, "GET", "/healthz", timeout=10)
            slowest = max(slowest, time.perf_counter() - now)
            if status != 200:
                raise RuntimeError(f"/healthz answered {status} during the flood")
            next_probe = now + 0.5
        time.sleep(0.1)
    elapsed = time.perf_counter() - t0
    ticks, dropped = _ticks(pid) - start_ticks, _dropped(ours.port) - start_dropped
    end_size = ours.log.stat().st_size
    written = _count_lines(ours.log, start_size, end_size)
    ours.kill()
    ours.log.unlink()  # hundreds of MB of "y"
    return {
        "flood_rss_mib": peak / 1024,
        "flood_cpu_percent": 100.0 * ticks / _TICKS / elapsed,
        "flood_lines_per_s": written / elapsed,
        "flood_dropped_per_s": dropped / elapsed,
        "flood_healthz_ms": slowest,
    }


def _ticks(pid: int) -> int:
    st = procfs.stat(pid)
    return 0 if st is None else st.utime + st.stime


def _dropped(port: int) -> float:
    status, body = peers.request(port, "GET", "/metrics", timeout=30)
    if status != 200:
        raise RuntimeError(f"/metrics answered {status}")
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in str(body).splitlines()
        if line.startswith("supervisor_output_dropped_lines_total{")
    )


def _count_lines(path: Any, start: int, end: int) -> int:
    count = 0
    with open(path, "rb") as f:
        f.seek(start)
        left = end - start
        while left > 0 and (chunk := f.read(min(left, 1 << 24))):
            count += chunk.count(b"\n")
            left -= len(chunk)
    return count
