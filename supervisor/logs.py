"""Logging: the supervisor's own events and agents' output, as text or JSON lines.

Everything goes through the ``supervisor`` logger. `setup()` (called by `supervisor run`)
hands records to a queue that one writer thread drains to stdout, so a slow reader of our
stdout never blocks the trio loop: logging costs the loop a queue put. Without `setup()`
records propagate to the root logger as usual (pytest's caplog sees them).

Text:  ``15:23:21.123 web | listening on :8000``      (agent output and ``ctx.log``)
       ``15:23:21.124 supervisor | INFO started web``  (the supervisor's own events)
JSON:  ``{"ts": …, "level": "INFO", "agent": "web", "stream": "stdout", "msg": "…"}``
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import queue
import sys
import time
from collections.abc import MutableMapping
from typing import Any, Literal

LogFormat = Literal["text", "json"]

log = logging.getLogger("supervisor")
_output = logging.getLogger("supervisor.output")
_agents = logging.getLogger("supervisor.agent")
_listener: logging.handlers.QueueListener | None = None


class AgentLog(logging.LoggerAdapter[logging.Logger]):
    """``ctx.log``: a logger whose records carry the agent's id."""

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = self.extra
        return msg, kwargs


def agent_log(agent_id: str) -> AgentLog:
    return AgentLog(_agents, {"agent": agent_id})


def relay(agent_id: str, stream: str, line: str) -> None:
    """Log one line of a process's output (stream is "stdout" or "stderr")."""
    if _output.isEnabledFor(logging.INFO):
        _output.info(line, extra={"agent": agent_id, "stream": stream})


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%H:%M:%S", time.localtime(record.created))
        stamp = f"{ts}.{int(record.msecs):03d}"
        agent = getattr(record, "agent", None)
        msg = record.getMessage()
        if record.exc_info:
            msg = f"{msg}\n{self.formatException(record.exc_info)}"
        if agent is None:
            return f"{stamp} supervisor | {record.levelname} {msg}"
        if getattr(record, "stream", None) is not None:
            return f"{stamp} {agent} | {msg}"
        return f"{stamp} {agent} | {record.levelname} {msg}"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname,
            # An agent's own lines carry `agent`; the supervisor's events about an
            # agent carry `about`, so both can be filtered by agent id.
            "agent": getattr(record, "agent", None) or getattr(record, "about", None),
        }
        stream = getattr(record, "stream", None)
        if stream is not None:
            out["stream"] = stream
        out["msg"] = record.getMessage()
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup(fmt: LogFormat = "text", level: str = "INFO") -> None:
    """Send every ``supervisor`` record to stdout through a writer thread."""
    global _listener
    shutdown()
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    q: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    _listener = logging.handlers.QueueListener(q, handler)
    log.handlers[:] = [logging.handlers.QueueHandler(q)]
    log.setLevel(level.upper())
    # Agents' output is theirs, not a supervisor event: --log-level does not hide it.
    _output.setLevel(logging.INFO)
    log.propagate = False
    _listener.start()


def shutdown() -> None:
    """Flush what is queued and stop the writer thread."""
    global _listener
    if _listener is not None:
        _listener.stop()
        _listener = None
        sys.stdout.flush()
