"""The AGENT shape the API answers (GET /agents, events, status): a slot as JSON.

Reads only: `agent_json` looks at `Slot.statistics()`, which is sync; the table of slots
changes only between the owner's awaits, so a read here never sees it half changed.

``?fields=id,state,spec.enabled`` (`Fields`) asks for part of each AGENT: the answer is
the whole AGENT with only those keys kept, and what is not asked is not computed: no
spec rendered without ``spec`` (the most of a full answer's cost), no /proc read without
``cpu`` or ``rss`` (docs/api.md#get-agents).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterable
from typing import Any

import attrs
import trio

from supervisor import manifest as mf
from supervisor.api.errors import ApiError
from supervisor.core.outcome import ExitRecord
from supervisor.health.monitor import HealthRecord
from supervisor.manifest.convert import plain
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


# The AGENT's keys, in its order; then a spec's keys, each a field ``spec.KEY`` of its own.
AGENT_KEYS = (
    *("id", "kind", "source", "state", "pid", "restarts", "since", "last_exit", "spec"),
    *("up", "status", "reason", "blocked", "cpu", "rss", "health"),
)
SPEC_KEYS = tuple(field.name for field in attrs.fields(mf.AgentKeys))
FIELDS = (*AGENT_KEYS, *(f"spec.{key}" for key in SPEC_KEYS))
_USAGE_KEYS = frozenset({"cpu", "rss"})


@attrs.frozen
class Fields:
    """What ``?fields=`` asks of each AGENT: `keys` kept (in the AGENT's order), and, when
    ``spec`` itself is not asked, `spec_keys` of it (in the spec's order)."""

    keys: tuple[str, ...]
    spec_keys: tuple[str, ...]

    @property
    def usage(self) -> bool:
        """Whether the agents' CPU or RSS is asked (a /proc read per process)."""
        return not _USAGE_KEYS.isdisjoint(self.keys)

    def keep(self, agent: dict[str, Any], spec: mf.AgentSpec) -> dict[str, Any]:
        out = {key: agent[key] for key in self.keys}
        if self.spec_keys:  # "spec" is among `keys` (its place), not rendered whole
            out["spec"] = spec_part(spec, self.spec_keys)
        return out


def parse_fields(raw: list[str]) -> Fields | None:
    """The ``fields`` query parameter(s), comma-separated names from `FIELDS`; None (every
    key) when there is none. ApiError 400, listing the valid names, for any other."""
    if not raw:
        return None
    names = [name for part in raw for name in part.split(",")]
    for name in names:
        if name not in FIELDS:
            raise ApiError(400, f"fields: no field {name[:40]!r}; the fields: {', '.join(FIELDS)}")
    asked = set(names)
    spec_keys = () if "spec" in asked else tuple(k for k in SPEC_KEYS if f"spec.{k}" in asked)
    if spec_keys:
        asked.add("spec")
    return Fields(tuple(k for k in AGENT_KEYS if k in asked), spec_keys)


def spec_part(spec: mf.AgentSpec, keys: tuple[str, ...]) -> dict[str, Any]:
    """`keys` of ``spec_to_table(spec)``, as it renders them, without rendering the rest."""
    if spec.path is not None:  # the one kind key the table shows, as it shows it
        kind: dict[str, Any] = {"path": str(spec.path)}
    elif spec.command is not None:
        kind = {"command": list(spec.command)}
    else:
        kind = {"entry": spec.entry}
    out: dict[str, Any] = {}
    for key in keys:
        if key in mf.KIND_KEYS:
            if key in kind:
                out[key] = kind[key]
        elif (value := getattr(spec, key)) is not None:
            out[key] = plain(value)
    return out


def agents_json(
    slots: Iterable[Slot], offset: float, *, every: bool = False, fields: Fields | None = None
) -> list[dict[str, Any]]:
    """The AGENT objects of `slots` (of them, `fields`), their usage read once for all
    (`supervisor.usage`) unless `fields` leave it out. `every`: these are all the agents,
    so readings of agents gone can be dropped."""
    slots = list(slots)
    if fields is not None and not fields.usage:
        return [agent_json(slot, offset, None, fields) for slot in slots]
    usage = read_usage(slots)
    if every:
        forget_gone(s.spec.id for s in slots)
    return [agent_json(slot, offset, usage.get(slot.spec.id), fields) for slot in slots]


def agent_json(
    slot: Slot, offset: float, usage: Usage | None = None, fields: Fields | None = None
) -> dict[str, Any]:
    """The AGENT object of docs/api.md, plus ``up``, ``status`` and ``reason``.
    `usage`: its CPU and RSS if read (`agents_json` reads them). `fields`: only those keys
    (the spec rendered only if asked whole)."""
    s = slot.statistics()
    spec = fields is None or ("spec" in fields.keys and not fields.spec_keys)
    agent = {
        "id": s.id,
        "kind": s.kind,
        "source": s.source,
        "state": s.state,
        "pid": s.pid,
        "restarts": s.restarts,
        "since": round(offset + s.since, 3),
        "last_exit": _exit_json(s.last_exit, offset),
        "spec": mf.spec_to_table(s.spec) if spec else None,
        "up": slot.up,
        "status": s.status,
        "reason": s.reason,
        "blocked": round(s.blocked, 3) if s.kind == "in-process" else None,
        "cpu": None if usage is None else usage.cpu,
        "rss": None if usage is None else usage.rss,
        "health": _health_json(s.health, offset),
    }
    return agent if fields is None else fields.keep(agent, s.spec)


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
