"""Agents for the health tests (``agents.health_agents:<name>``): in-process ones, and
process ones run as ``python3 health_agents.py NAME ARGS...``.

The process agents are real servers on 127.0.0.1 that turn unhealthy in the ways health
checks exist for: an HTTP server that starts answering 503, a TCP server that stops
accepting connections while it stays alive.
"""

from __future__ import annotations

import http.server
import socket
import sys
import threading
import time
from pathlib import Path

import trio

from supervisor import AgentContext


async def beats_then_stops(ctx: AgentContext) -> None:
    """Heartbeats `params.beats` times, one a second, then hangs (alive, silent)."""
    for _ in range(int(ctx.params.get("beats", 3))):
        ctx.heartbeat()
        await trio.sleep(1)
    await trio.sleep_forever()


async def beats_forever(ctx: AgentContext) -> None:
    while True:
        ctx.heartbeat()
        await trio.sleep(ctx.params.get("every", 1.0))


async def blocks_the_loop(ctx: AgentContext) -> None:
    """Calls blocking code in the loop once (the mistake loop_lag_warning names)."""
    await trio.sleep(ctx.params.get("after", 0.1))
    time.sleep(ctx.params.get("seconds", 1.0))  # noqa: ASYNC251 (the point of this agent)
    ctx.status("blocked")
    await trio.sleep_forever()


async def logs_ready(ctx: AgentContext) -> None:
    await trio.sleep(0.05)
    ctx.log.info("warming up")
    await trio.sleep(0.05)
    ctx.log.info("listening on port %d", 8080)
    await trio.sleep_forever()


# -- process agents -----------------------------------------------------------------


def http_server(port: int, good: int, count_file: str, then: str = "503") -> None:
    """Answers GET /healthz 200 `good` times (counted over restarts in `count_file`), then
    503 for ever; or, with `then` = "hang", never answers the next request (alive, its
    one thread stuck) and answers 200 again once restarted. Prints "serving" once it
    listens."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = Path(count_file)
            seen = int(path.read_text() or 0) if path.exists() else 0
            path.write_text(str(seen + 1))
            if then == "hang":
                if seen == good:
                    time.sleep(3600)
                self.send_response(200)
            else:
                self.send_response(200 if seen < good else 503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", port), Handler)
    server.allow_reuse_address = True
    print("serving", flush=True)
    server.serve_forever()


def tcp_server(port: int, accept_for: float) -> None:
    """Accepts connections for `accept_for` seconds, then closes its listener and stays
    alive, not accepting anything (connections are refused)."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen()
    print("listening", flush=True)

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.close()

    threading.Thread(target=accept, daemon=True).start()
    time.sleep(accept_for)
    listener.shutdown(socket.SHUT_RDWR)  # no longer listening (close alone races accept)
    listener.close()
    print("stopped accepting", flush=True)
    while True:
        time.sleep(60)


if __name__ == "__main__":
    name, *args = sys.argv[1:]
    if name == "http":
        http_server(int(args[0]), int(args[1]), args[2], *args[3:])
    elif name == "tcp":
        tcp_server(int(args[0]), float(args[1]))
    else:
        raise SystemExit(f"unknown agent {name!r}")
