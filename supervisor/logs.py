"""Logging: the supervisor's own events and agents' output, as text or JSON lines.

Everything goes through the ``supervisor`` logger. `setup()` (called by `supervisor run`)
hands formatted lines to a queue that one writer thread drains to stdout, so a slow reader
of our stdout never blocks the trio loop (`LoopFlush`: the loop's records are formatted and
queued when it waits, so logging costs a step a list append). The queue is
bounded (`QUEUE_CHARS`): when stdout cannot keep up, agents' output lines are dropped and
counted per agent (`dropped`, in /metrics, and a warning once stdout has room again); the
supervisor's own records have as much room again before they are dropped too (counted in
`own_dropped`). Agents' recent output is kept in full by their slots all the same
(`supervisor.output`). Without `setup()` records propagate to the root logger as usual
(pytest's caplog sees them).

Text:  ``15:23:21.123 web | listening on :8000``      (agent output and ``ctx.log``)
       ``15:23:21.124 supervisor | INFO started web``  (the supervisor's own events)
JSON:  ``{"ts": …, "level": "INFO", "agent": "web", "stream": "stdout", "msg": "…"}``
"""

from __future__ import annotations

import json
import logging
import queue
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, MutableMapping, Sequence
from typing import Any, Literal, TextIO

import trio

from supervisor.escape import CONTINUATION, escape_lines, escape_text

LogFormat = Literal["text", "json"]

log = logging.getLogger("supervisor")
_output = logging.getLogger("supervisor.output")
_agents = logging.getLogger("supervisor.agent")
# Characters of formatted lines waiting for the writer thread before agents' output is
# dropped; the supervisor's own records may use as much again. About 2-4 MiB of memory.
QUEUE_CHARS = 1 << 20
# Lines relayed between checkpoints when records go through `logging` (no `setup()`).
LINES_PER_STEP = 256
LATER_MAX = 1024  # records of the loop's thread held for `LoopFlush`, at most

# Lines of agents' output not written to stdout because it was too slow, by agent id.
dropped: Counter[str] = Counter()
own_dropped = 0  # the supervisor's own records dropped so

# Sink for an agent's lines: (stream, lines), stored in its recent output.
LineSink = Callable[[str, Sequence[str]], None]


class AgentLog(logging.LoggerAdapter[logging.Logger]):
    """``ctx.log``: a logger whose records carry the agent's id.

    With a `sink`, every record at INFO or above (or below, if enabled) is also handed to
    it as one line of stream "log": the agent's recent output (GET /agents/{id}/logs).
    """

    def __init__(self, logger: logging.Logger, agent_id: str, sink: LineSink | None) -> None:
        super().__init__(logger, {"agent": agent_id})
        self._sink = sink

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = self.extra
        return msg, kwargs

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if self._sink is not None and (level >= logging.INFO or self.isEnabledFor(level)):
            self._sink("log", [_log_line(level, msg, args, kwargs.get("exc_info"))])
        kwargs["stacklevel"] = kwargs.get("stacklevel", 1) + 1  # the caller, not this
        super().log(level, msg, *args, **kwargs)


def _log_line(level: int, msg: object, args: tuple[object, ...], exc_info: object) -> str:
    try:
        text = str(msg) % args if args else str(msg)
    except (TypeError, ValueError):
        text = f"{msg} {args}"
    if level != logging.INFO:
        text = f"{logging.getLevelName(level)} {text}"
    if exc_info:
        if not isinstance(exc_info, BaseException | tuple):
            exc_info = sys.exc_info()
        if isinstance(exc_info, BaseException):
            exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
        if exc_info[0] is not None:
            text = f"{text}\n{_plain.formatException(exc_info)}"
    return text


_plain = logging.Formatter()


def agent_log(agent_id: str, sink: LineSink | None = None) -> AgentLog:
    return AgentLog(_agents, agent_id, sink)


async def relay_lines(agent_id: str, stream: str, lines: Sequence[str]) -> None:
    """Write a batch of one process's output lines to stdout (stream "stdout"/"stderr").

    With `setup()` done, the lines are formatted here and queued as one piece; those that
    do not fit in the queue are counted in `dropped`. Otherwise each goes through
    `logging`, LINES_PER_STEP between checkpoints. Checkpoints at least once either way.
    """
    writer = _writer
    if writer is None:
        for start in range(0, len(lines), LINES_PER_STEP):
            if _output.isEnabledFor(logging.INFO):
                for line in lines[start : start + LINES_PER_STEP]:
                    _output.info(line, extra={"agent": agent_id, "stream": stream})
            await trio.lowlevel.checkpoint()
        return
    writer.relay(agent_id, stream, lines)
    await trio.lowlevel.checkpoint()


def write_lines(agent_id: str, stream: str, lines: Sequence[str]) -> None:
    """`relay_lines` without the checkpoints, for a few lines (a partial last line)."""
    writer = _writer
    if writer is not None:
        writer.relay(agent_id, stream, lines)
    elif _output.isEnabledFor(logging.INFO):
        for line in lines:
            _output.info(line, extra={"agent": agent_id, "stream": stream})


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%H:%M:%S", time.localtime(record.created))
        stamp = f"{ts}.{int(record.msecs):03d}"
        agent = getattr(record, "agent", None)
        # Agents' text is shown, not obeyed (supervisor.escape): an agent's line, and
        # the supervisor's event about an agent, stay one line; the supervisor's own
        # multi-line messages (lists of problems) and tracebacks continue on indented
        # lines, so that only a record's first line starts at column 0.
        msg = record.getMessage()
        one_line = agent is not None or getattr(record, "about", None) is not None
        msg = escape_text(msg) if one_line else escape_lines(msg)
        if record.exc_info:
            trace = escape_lines(self.formatException(record.exc_info))
            msg = f"{msg}\n{CONTINUATION}{trace}"
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


class _Writer:
    """A thread writing queued text to `stream`; the queue holds at most ~2 QUEUE_CHARS."""

    def __init__(self, stream: TextIO, fmt: LogFormat) -> None:
        self._stream = stream
        self._json = fmt == "json"
        self._queue: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._queued = 0  # characters in the queue
        self._dropped = 0  # agents' lines dropped (written by the loop's thread only)
        self._reported = 0  # of which the writer has told stdout about
        # What the loop's thread offered, and its records unformatted: for `LoopFlush`.
        self._later: list[str | tuple[logging.LogRecord, _WriterHandler]] = []
        self.loop_thread: int | None = None
        self._thread = threading.Thread(target=self._run, name="supervisor-log", daemon=True)
        self._thread.start()

    def offer(self, text: str, *, own: bool) -> bool:
        """Queue `text` (one or more lines, no final newline) if it fits; else False."""
        if not self.fits(text, own=own):
            return False
        if threading.get_ident() == self.loop_thread:
            self._later.append(text)
        else:
            self._queue.put(text)
        return True

    def fits(self, text: str, *, own: bool) -> bool:
        """Count `text` in if the queue has room for it (agents' output has half)."""
        with self._lock:
            if self._queued + len(text) + 1 > (2 * QUEUE_CHARS if own else QUEUE_CHARS):
                return False
            self._queued += len(text) + 1
        return True

    def hand_over(self) -> None:
        """Queue what the loop's thread offered since it last waited (records formatted)."""
        later, self._later = self._later, []
        texts = []
        for item in later:
            if isinstance(item, str):
                texts.append(item)
            elif (text := item[1].render(item[0])) is not None:
                texts.append(text)
        if texts:
            self._queue.put(texts[0] if len(texts) == 1 else "\n".join(texts))

    def relay(self, agent_id: str, stream: str, lines: Sequence[str]) -> None:
        with self._lock:
            room = QUEUE_CHARS - self._queued
        if room <= 0:
            self._drop(agent_id, len(lines))
            return
        now = time.time()
        fit = 0
        for line in lines:
            room -= len(line) + len(agent_id) + 20
            if room < 0:
                break
            fit += 1
        if fit < len(lines):
            self._drop(agent_id, len(lines) - fit)
        if fit == 0:
            return
        if self._json:
            ts = round(now, 6)
            text = "\n".join(
                json.dumps(
                    {"ts": ts, "level": "INFO", "agent": agent_id, "stream": stream, "msg": line},
                    ensure_ascii=False,
                )
                for line in lines[:fit]
            )
        else:
            prefix = f"{_stamp(now)} {agent_id} | "
            # Agents' text is shown, not obeyed: control characters escaped.
            text = prefix + f"\n{prefix}".join(map(escape_text, lines[:fit]))
        if not self.offer(text, own=False):
            self._drop(agent_id, fit)

    def _drop(self, agent_id: str, count: int) -> None:
        dropped[agent_id] += count
        self._dropped += count

    drop = _drop

    def close(self) -> None:
        """Write what is queued, then end the thread."""
        self.loop_thread = None
        if self._later:
            self.hand_over()
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while (text := self._queue.get()) is not None:
            parts = [text]
            try:
                while len(parts) < 64 and (more := self._queue.get_nowait()) is not None:
                    parts.append(more)
            except queue.Empty:
                more = ""
            self._write(parts)
            if more is None:
                break

    def _write(self, parts: list[str]) -> None:
        text = "\n".join(parts) + "\n"
        with self._lock:
            self._queued -= len(text)
            calm = self._queued < QUEUE_CHARS // 2
        missed = self._dropped - self._reported
        if missed and calm:  # stdout keeps up again: say what it missed
            self._reported += missed
            text += self._missed_line(missed) + "\n"
        try:
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError):
            pass  # stdout closed or broken: nothing else to tell it to

    def _missed_line(self, missed: int) -> str:
        msg = (
            f"{missed} lines of agents' output were not written here (stdout was too slow); "
            "they are counted in /metrics and kept in GET /agents/ID/logs"
        )
        now = time.time()
        if self._json:
            out = {"ts": round(now, 6), "level": "WARNING", "agent": None, "msg": msg}
            return json.dumps(out)
        return f"{_stamp(now)} supervisor | WARNING {msg}"


class _WriterHandler(logging.Handler):
    """Formats each record in the caller's thread and offers it to the writer."""

    def __init__(self, writer: _Writer) -> None:
        super().__init__()
        self._writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        writer = self._writer
        if threading.get_ident() != writer.loop_thread:
            if (text := self.render(record)) is not None:
                writer._queue.put(text)
            return
        # From the loop's thread: formatted once the loop waits (`LoopFlush`), the message
        # made now (its arguments may change); past LATER_MAX, handed over as they come.
        try:
            record.msg, record.args = record.getMessage(), None
        except Exception:
            self.handleError(record)
            return
        if len(writer._later) >= LATER_MAX:
            writer.hand_over()
        writer._later.append((record, self))

    def render(self, record: logging.LogRecord) -> str | None:
        """`record` formatted, if it fits in the queue (else it is counted dropped)."""
        global own_dropped
        try:
            text = self.format(record)
        except Exception:
            self.handleError(record)
            return None
        agent = getattr(record, "agent", None)
        if record.name == _output.name and agent is not None:
            if not self._writer.fits(text, own=False):
                self._writer.drop(agent, 1)
                return None
        elif not self._writer.fits(text, own=True):
            own_dropped += 1
            return None
        return text


class LoopFlush(trio.abc.Instrument):
    """What a trio run's thread logs is formatted and handed to the writer when the loop
    next waits for I/O, not as it is logged: the formatting, and the writer thread woken
    to take the GIL, would be in the middle of the step (a restart's, between the exit
    and the spawn: ~0.2 ms, docs/performance.md); a step that logs much wakes it once."""

    def before_run(self) -> None:
        if _writer is not None:
            _writer.loop_thread = threading.get_ident()

    def before_io_wait(self, timeout: float) -> None:
        if _writer is not None and _writer._later:
            _writer.hand_over()

    def after_run(self) -> None:
        if _writer is not None:
            _writer.loop_thread = None
            self.before_io_wait(0)


def _stamp(created: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(created)) + f".{int(created * 1000) % 1000:03d}"


_writer: _Writer | None = None


def setup(fmt: LogFormat = "text", level: str = "INFO", stream: TextIO | None = None) -> None:
    """Send every ``supervisor`` record to `stream` (stdout) through a writer thread."""
    global _writer
    shutdown()
    _writer = _Writer(stream or sys.stdout, fmt)
    handler = _WriterHandler(_writer)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    log.handlers[:] = [handler]
    log.setLevel(level.upper())
    # Our formats show no caller's file, line, thread or process: records need not find them
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    # Agents' output is theirs, not a supervisor event: --log-level does not hide it.
    _output.setLevel(logging.INFO)
    log.propagate = False


def shutdown() -> None:
    """Flush what is queued and stop the writer thread."""
    global _writer
    if _writer is not None:
        writer, _writer = _writer, None
        log.handlers[:] = []
        log.propagate = True
        writer.close()
        sys.stdout.flush()
