"""The `supervisor status` table: one aligned row per agent, durations like `ps`.

Every cell is shown with its control characters escaped (`supervisor.escape`): an
agent's STATUS or exception text cannot drive the terminal or add a row.
"""

from __future__ import annotations

from supervisor.escape import escape_text

_COLUMNS = ("ID", "KIND", "STATE", "PID", "RESTARTS", "UPTIME", "CPU", "MEM", "LAST EXIT", "NOTE")
# What the table (and `supervisor status`'s exit code: `up`) reads of each AGENT: asked for
# with ?fields=, the answer leaves out each spec, most of a full answer (docs/api.md).
FIELDS = (
    "id,kind,state,pid,restarts,since,cpu,rss,last_exit,status,reason,health,blocked,up,"
    "spec.enabled"
)

TYPE_CHECKING = False  # see supervisor/__init__.py
if TYPE_CHECKING:
    from typing import Any


def format_table(agents: list[dict[str, Any]], *, now: float) -> str:
    """The agents as an aligned text table; `now` is the wall time uptimes end at."""
    rows = [_COLUMNS, *(tuple(map(escape_text, _row(a, now))) for a in agents)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS) - 1)]
    return "\n".join(
        "  ".join(
            [*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[-1]]
        ).rstrip()
        for row in rows
    )


def _row(agent: dict[str, Any], now: float) -> tuple[str, ...]:
    running = agent["state"] == "running"
    return (
        agent["id"],
        agent["kind"],
        agent["state"] if agent.get("spec", {}).get("enabled", True) else "disabled",
        "-" if agent["pid"] is None else str(agent["pid"]),
        str(agent["restarts"]),
        format_duration(now - agent["since"]) if running else "-",
        "-" if agent.get("cpu") is None else f"{agent['cpu']:.1f}%",
        format_bytes(agent.get("rss")),
        _last_exit(agent["last_exit"], now),
        _note(agent) if running else agent.get("reason") or "",
    )


def _note(agent: dict[str, Any]) -> str:
    """A running agent's status text, then what its health checks last said."""
    notes = [agent.get("status") or ""]
    health = agent.get("health") or {}
    if health.get("result") not in (None, "ok"):
        notes.append(f"{health['probe']}: {health['result']}")
    if health.get("ended_run"):
        notes.append(f"restarted: {health['ended_run']}")
    if agent.get("blocked"):
        notes.append(f"blocked the loop {agent['blocked']:.1f}s")
    return "; ".join(note for note in notes if note)


def _last_exit(last: dict[str, Any] | None, now: float) -> str:
    if last is None:
        return "-"
    if "error" in last:
        how = last["error"] if len(last["error"]) <= 40 else last["error"][:39] + "…"
    elif "signal" in last:
        how = str(last["signal"])
    elif "code" in last:
        how = f"code {last['code']}"
    else:
        how = ""
    if last.get("stopped"):  # a stop asked for it: what the run did when told to end
        how = f"stopped: {how}" if how else "stopped"
    if last.get("killed"):  # stop_timeout passed: what was left got SIGKILL
        how += " after stop_timeout" if how.endswith("SIGKILL") else " (SIGKILL after stop_timeout)"
    return f"{how}, {format_duration(now - last['at'])} ago"


def format_bytes(count: int | None) -> str:
    """``812K``, ``34.2M``, ``1.5G`` (binary units, as ``ps`` and pm2 show memory)."""
    if count is None:
        return "-"
    if count < 1 << 20:
        return f"{count >> 10}K"
    if count < 1 << 30:
        return f"{count / (1 << 20):.1f}M"
    return f"{count / (1 << 30):.1f}G"


def format_duration(seconds: float) -> str:
    """``42s``, ``3m07s``, ``2h05m``, ``3d04h``: two units at most, like `ps`."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"
