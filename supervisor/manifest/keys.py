"""The keys as a manifest file writes them: `AgentKeys`, `Document`, `IncludedDocument`.

The converter structures raw TOML into these models (each layer of an agent's keys on
its own, so that its errors name its own file), and the JSON Schema is generated from
them. What the keys resolve to is `supervisor.manifest.model`.
"""

from __future__ import annotations

import signal
from typing import Any

import attrs

from supervisor.manifest.model import (
    ENTRY_PATTERN,
    Backoff,
    Probe,
    ReadyMode,
    ReadyProbe,
    RestartMode,
    described,
)


@attrs.frozen(kw_only=True)
class AgentKeys:
    """The keys one table gives for an agent, type-checked; None means "not given here".

    An agent's keys come in layers, each one structured into this model on its own so
    that its errors name its own file: `[defaults]`, a folder's agent.toml, the
    manifest's `[agents.ID]` table (or an API request's body).
    """

    entry: str | None = attrs.field(
        default=None,
        metadata=described(
            'in-process agent: an async callable "module:function", imported with the'
            " manifest's folder first on the import path",
            pattern=ENTRY_PATTERN,
        ),
    )
    command: tuple[str, ...] | str | None = attrs.field(
        default=None,
        metadata=described(
            "process agent: the command line, an array or a string split like a shell;"
            " it runs in its own process group",
            non_empty=True,
        ),
    )
    path: str | None = attrs.field(
        default=None,
        metadata=described(
            "folder agent: a folder holding agent.toml or agent.json (agent keys) and its"
            ' code; with only an agent.py, the entry is "agent:main" imported from it',
            non_empty=True,
        ),
    )
    params: dict[str, Any] | None = attrs.field(
        default=None, metadata=described("free table handed to in-process agents as ctx.params")
    )
    env: dict[str, str] | None = attrs.field(
        default=None, metadata=described("environment variables added for processes")
    )
    cwd: str | None = attrs.field(
        default=None,
        metadata=described(
            "working directory for processes, relative to the manifest's folder; default:"
            " the manifest's folder, or the agent's folder for a folder agent"
        ),
    )
    restart: RestartMode | None = attrs.field(
        default=None, metadata=described("when to restart the agent after it ends")
    )
    success_codes: tuple[int, ...] | None = attrs.field(
        default=None, metadata=described("exit codes that are not failures", minimum=0, maximum=255)
    )
    backoff: Backoff | None = attrs.field(
        default=None,
        metadata=described("delay before restart n: min(max, initial * factor**(n-1)), ± jitter"),
    )
    reset_after: float | None = attrs.field(
        default=None,
        metadata=described("seconds of healthy running that forgive earlier failures", minimum=0),
    )
    max_restarts: int | None = attrs.field(
        default=None,
        metadata=described(
            "restarts allowed within restart_window seconds; one more and the agent is failed",
            minimum=0,
        ),
    )
    restart_window: float | None = attrs.field(
        default=None, metadata=described("seconds over which max_restarts counts", minimum=0)
    )
    ready: ReadyMode | ReadyProbe | None = attrs.field(
        default=None,
        metadata=described(
            '"immediate": running once launched; "notify": the agent says so, with'
            " ctx.ready() or READY=1 on $NOTIFY_SOCKET; or a probe table: once it first passes"
        ),
    )
    start_timeout: float | None = attrs.field(
        default=None,
        metadata=described("seconds to become ready; past it, the start is a failure", minimum=0),
    )
    stop_signal: signal.Signals | None = attrs.field(
        default=None,
        metadata=described('first signal sent to the process group on stop, e.g. "SIGTERM"'),
    )
    stop_timeout: float | None = attrs.field(
        default=None,
        metadata=described(
            "seconds of grace for cleanup; then SIGKILL to the group, or a hard cancel",
            minimum=0,
        ),
    )
    after: tuple[str, ...] | None = attrs.field(
        default=None,
        metadata=described(
            "ids that must be running before this agent starts; it stops before them"
        ),
    )
    critical: bool | None = attrs.field(
        default=None,
        metadata=described(
            "if this agent ends failed, the supervisor stops everything and exits 3"
        ),
    )
    enabled: bool | None = attrs.field(
        default=None, metadata=described("false: declared but not run")
    )
    log_lines: int | None = attrs.field(
        default=None,
        metadata=described(
            "lines of recent output kept in memory for GET /agents/{id}/logs", minimum=0
        ),
    )
    liveness: Probe | None = attrs.field(
        default=None,
        metadata=described(
            "a probe checked while the agent is running; `failures` failed checks in a row"
            " end the run as failed, and the restart policy decides"
        ),
    )
    watchdog: float | None = attrs.field(
        default=None,
        metadata=described(
            "seconds: while running, the agent sends WATCHDOG=1 (sd_notify) or calls"
            " ctx.heartbeat() at least this often, or its run fails; 0 is off",
            minimum=0,
        ),
    )
    user: str | None = attrs.field(
        default=None,
        metadata=described(
            "process agents: run as this user (name or uid), with its groups and its HOME,"
            ' USER and LOGNAME; needs a supervisor running as root; "" is the supervisor\'s'
        ),
    )
    group: str | None = attrs.field(
        default=None,
        metadata=described('process agents: run with this group (name or gid); "" is the user\'s'),
    )


@attrs.frozen(kw_only=True)
class Document:
    """The top level of a manifest file; structured only to check its table names."""

    supervisor: dict[str, Any] = attrs.field(
        factory=dict, metadata=described("settings of the supervisor itself")
    )
    defaults: dict[str, Any] = attrs.field(
        factory=dict,
        metadata=described(
            "keys every agent gets unless it gives its own; params and env merge key by key"
        ),
    )
    agents: dict[str, Any] = attrs.field(
        factory=dict, metadata=described("the agents, by id: [a-z0-9][a-z0-9_.-]{0,62}")
    )


@attrs.frozen(kw_only=True)
class IncludedDocument:
    """The top level of an included file: agents only."""

    agents: dict[str, Any] = attrs.field(factory=dict, metadata=described("the agents, by id"))
