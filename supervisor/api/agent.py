"""The AGENT shape the API answers (GET /agents, events, status): a slot as JSON.

Reads only: `agent_json` looks at `Slot.statistics()`, which is sync; the table of slots
changes only between the owner's awaits, so a read here never sees it half changed.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterable
from typing import Any

import trio

from supervisor import manifest as mf
from supervisor.core.outcome import ExitRecord
from supervisor.health.monitor import HealthRecord
from supervisor.owner import Supervisor
from supervisor.slot import Slot
from supervisor.usage import Usage, forget_gone, read_usage

_WALL_OFFSET: trio.lowlevel.RunVar[float] = trio.lowlevel.RunVar("wall_offset")


def wall_offset() -> float:
    """Add this to a trio time to get a wall time (seconds since the epoch).

    Taken once per run: read afresh, the two clocks' readings would make an untouched
    agent's ``since`` wobble by a fraction of a millisecond from one answer to the next.
    """
    try:
        return _WALL_OFFSET.get()
    except LookupError:
        _WALL_OFFSET.set(time.time() - trio.current_time())
        return _WALL_OFFSET.get()


def agents_json(
    slots: Iterable[Slot], offset: float, *, every: bool = False
) -> list[dict[str, Any]]:
    """The AGENT objects of `slots`, their usage read once for all (`supervisor.usage`).
    `every`: these are all the agents, so readings of agents gone can be dropped."""
    slots = list(slots)
    usage = read_usage(slots)
    if every:
        forget_gone(s.spec.id for s in slots)
    return [agent_json(slot, offset, usage.get(slot.spec.id)) for slot in slots]


def agent_json(slot: Slot, offset: float, usage: Usage | None = None) -> dict[str, Any]:
    """The AGENT object of docs/api.md, plus ``up``, ``status`` and ``reason``.
    `usage`: its CPU and RSS if read (`agents_json` reads them)."""
    s = slot.statistics()
    return {
        "id": s.id,
        "kind": s.kind,
        "source": s.source,
        "state": s.state,
        "pid": s.pid,
        "restarts": s.restarts,
        "since": round(offset + s.since, 3),
        "last_exit": _exit_json(s.last_exit, offset),
        "spec": mf.spec_to_table(s.spec),
        "up": slot.up,
        "status": s.status,
        "reason": s.reason,
        "blocked": round(s.blocked, 3) if s.kind == "in-process" else None,
        "cpu": None if usage is None else usage.cpu,
        "rss": None if usage is None else usage.rss,
        "health": _health_json(s.health, offset),
    }


def _health_json(record: HealthRecord | None, offset: float) -> dict[str, Any] | None:
    """The last probe check and the watchdog of an agent that has any (docs/api.md)."""
    if record is None:
        return None
    return {
        "probe": record.probe or None,  # "ready" or "liveness": the last one checked
        "result": record.result or None,  # "ok", or what failed
        "checked_at": None if record.checked_at is None else round(offset + record.checked_at, 3),
        "failures_in_a_row": record.in_a_row,
        "watchdog": record.watchdog or None,
        "last_heartbeat": round(offset + record.last_beat, 3) if record.last_beat else None,
        "ended_run": record.runs_ended or None,  # why health last ended a run
    }


def _exit_json(rec: ExitRecord | None, offset: float) -> dict[str, Any] | None:
    if rec is None:
        return None
    out: dict[str, Any] = {"at": round(offset + rec.at, 3)}
    if rec.code is not None:
        out["code"] = rec.code
    if rec.signal is not None:
        out["signal"] = _signal_name(rec.signal)
    if rec.error is not None:
        out["error"] = rec.error
    if rec.stopped:
        out["stopped"] = True
    if rec.killed:
        out["killed"] = True
    return out


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def not_ready(sup: Supervisor) -> dict[str, str]:
    """{id: why} for every enabled agent that is not up (running, or exited ok)."""
    return {
        agent_id: f"{slot.state}: {slot.reason}" if slot.reason else slot.state
        for agent_id, slot in sup.slots.items()
        if slot.spec.enabled and not slot.up
    }
