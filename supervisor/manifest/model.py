"""The manifest's attrs models: what a valid manifest is, and the keys as written.

`AgentSpec`, `Backoff`, `Settings` and `Manifest` are what the rest of the supervisor
sees (through `supervisor.manifest`, which re-exports them). `AgentKeys`, `Document` and
`IncludedDocument` model the tables as a file writes them: the converter structures raw
TOML into them, and the JSON Schema is generated from them.

Each field's metadata (`_doc`) holds its description and its rules (`minimum`,
`maximum`, `pattern`, `non_empty`), so the loader and the schema cannot disagree.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any, Literal

import attrs

Kind = Literal["in-process", "process"]
RestartMode = Literal["always", "on-failure", "never"]
ReadyMode = Literal["immediate", "notify"]
Source = Literal["manifest", "api"]

DEFAULT_API = "127.0.0.1:7070"
ID_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,62}$"

KIND_KEYS = ("entry", "command", "path")
FOLDER_FILES = ("agent.toml", "agent.json")
FOLDER_ENTRY = "agent:main"  # the entry of a folder that holds only an agent.py
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
ENTRY_PATTERN = rf"^{_NAME}(\.{_NAME})*:{_NAME}(\.{_NAME})*$"  # "pkg.mod:func" or "mod:obj.attr"
# [supervisor] cluster and member; "" means "alone" and "the host name".
CLUSTER_PATTERN = r"^(etcd://[^/,\s]+(,[^/,\s]+)*(/[A-Za-z0-9_.-]+)?/?)?$"
MEMBER_PATTERN = r"^([A-Za-z0-9][A-Za-z0-9_.-]{0,252})?$"


def _doc(text: str, **rules: Any) -> dict[str, Any]:
    """Field metadata: the description editors show (via `json_schema`), and rules.

    Rules hold for the loader and the schema alike: `minimum` and `maximum` (of a
    number, or of each item of an array), `pattern` (of a string), `non_empty`.
    """
    return {"doc": text, **rules}


# --- The resolved models: what the rest of the supervisor sees ---------------------


@attrs.frozen(kw_only=True)
class Probe:
    """A liveness probe (docs/agents.md, "Health"): one of `http`, `tcp`, `exec`.

    `exec` is an array (or a string split like a shell) once structured: a tuple.
    """

    http: str | None = attrs.field(
        default=None,
        metadata=_doc(
            'GET this URL, e.g. "http://127.0.0.1:8080/healthz"; any 2xx or 3xx answer passes',
            non_empty=True,
        ),
    )
    tcp: str | None = attrs.field(
        default=None,
        metadata=_doc('"HOST:PORT": passes when a connection is accepted', non_empty=True),
    )
    exec: tuple[str, ...] | str | None = attrs.field(
        default=None,
        metadata=_doc(
            "a command run with the agent's env, cwd and user; exit 0 passes", non_empty=True
        ),
    )
    period: float = attrs.field(default=10.0, metadata=_doc("seconds between checks", minimum=0.01))
    timeout: float = attrs.field(
        default=1.0,
        metadata=_doc("seconds one check may take; past it, it failed", minimum=0.001),
    )
    failures: int = attrs.field(
        default=3, metadata=_doc("failed checks in a row that end the run", minimum=1)
    )
    initial_delay: float = attrs.field(
        default=0.0,
        metadata=_doc("seconds after the agent is running before the first check", minimum=0),
    )

    @property
    def kind(self) -> str:
        """Which check this is: "http", "tcp", "exec" or "log"."""
        for name in PROBE_KINDS:
            if getattr(self, name, None) is not None:
                return name
        return ""


@attrs.frozen(kw_only=True)
class ReadyProbe(Probe):
    """A readiness probe: the agent is running once it first passes (within start_timeout)."""

    log: str | None = attrs.field(
        default=None,
        metadata=_doc("a regular expression: passes when a line of the agent's output matches"),
    )
    period: float = attrs.field(default=0.5, metadata=_doc("seconds between checks", minimum=0.01))
    initial_delay: float = attrs.field(
        default=0.0,
        metadata=_doc("seconds after the agent is launched before the first check", minimum=0),
    )


PROBE_KINDS = ("http", "tcp", "exec", "log")


@attrs.frozen(kw_only=True)
class Backoff:
    """Delay before restart n: ``min(max, initial * factor**(n-1))``, ± ``jitter`` fraction."""

    initial: float = attrs.field(
        default=0.5, metadata=_doc("seconds to wait before the first restart", minimum=0)
    )
    max: float = attrs.field(default=30.0, metadata=_doc("longest wait, in seconds", minimum=0))
    factor: float = attrs.field(
        default=2.0, metadata=_doc("each further restart waits this many times longer", minimum=1)
    )
    jitter: float = attrs.field(
        default=0.1,
        metadata=_doc(
            "random spread, as a fraction of the wait: 0.1 is ±10%", minimum=0, maximum=1
        ),
    )


@attrs.frozen(kw_only=True)
class AgentSpec:
    """One agent, fully resolved: what to run and how to keep it alive.

    `kind` is what runs: an async callable (`entry`, imported with `root` first on the
    import path) or a child process (`command`, in `cwd`). `path` is set for folder
    agents only; `digest` then hashes the folder's files.
    """

    id: str
    kind: Kind
    entry: str | None = None
    command: tuple[str, ...] | None = None
    path: Path | None = None
    root: Path
    digest: str = ""
    params: dict[str, Any] = attrs.field(factory=dict)
    env: dict[str, str] = attrs.field(factory=dict)
    cwd: Path
    restart: RestartMode = "on-failure"
    success_codes: tuple[int, ...] = (0,)
    backoff: Backoff = Backoff()
    reset_after: float = 60.0
    max_restarts: int = 5
    restart_window: float = 60.0
    ready: ReadyMode | ReadyProbe = "immediate"
    start_timeout: float = 30.0
    stop_signal: signal.Signals = signal.SIGTERM
    stop_timeout: float = 10.0
    after: tuple[str, ...] = ()
    critical: bool = False
    enabled: bool = True
    log_lines: int = 1000
    liveness: Probe | None = None
    watchdog: float = 0.0
    user: str = ""
    group: str = ""


@attrs.frozen(kw_only=True)
class Settings:
    """The `[supervisor]` table."""

    api: str = attrs.field(
        default=DEFAULT_API,
        metadata=_doc(
            'control API address: "HOST:PORT", "unix:/path/to.sock", or "" for no API;'
            " --api overrides it"
        ),
    )
    shutdown_timeout: float = attrs.field(
        default=30.0, metadata=_doc("seconds for everything to stop on SIGTERM/SIGINT", minimum=0)
    )
    state_file: Path | None = attrs.field(
        default=None,
        metadata=_doc('TOML file keeping the agents loaded over the API; "" keeps them in memory'),
    )
    api_token_file: Path | None = attrs.field(
        default=None, metadata=_doc("file holding the API token; $SUPERVISOR_TOKEN also sets it")
    )
    include: tuple[str, ...] = attrs.field(
        default=(),
        metadata=_doc("globs relative to this file; included files hold [agents.*] tables only"),
    )
    cluster: str = attrs.field(
        default="",
        metadata=_doc(
            'share this manifest with other supervisors through etcd: "etcd://HOST:PORT'
            '[,HOST:PORT...][/NAMESPACE]"; "" runs alone; --cluster overrides it',
            pattern=CLUSTER_PATTERN,
        ),
    )
    member: str = attrs.field(
        default="",
        metadata=_doc(
            'this supervisor\'s name in the cluster, unique there; "" is the host name;'
            " --member overrides it",
            pattern=MEMBER_PATTERN,
        ),
    )
    loop_lag_warning: float = attrs.field(
        default=0.5,
        metadata=_doc(
            "seconds: an in-process agent holding the event loop longer than this in one step"
            " is named in a warning, counted in /metrics and in its AGENT (blocked); 0 is off",
            minimum=0,
        ),
    )
    lease_ttl: float = attrs.field(
        default=10.0,
        metadata=_doc(
            "seconds a member that lost etcd keeps its agents' ownership; its agents stop"
            " within half of it, and others take them over after it",
            minimum=1,
        ),
    )
    etcd_ca: Path | None = attrs.field(
        default=None,
        metadata=_doc("CA certificate file that etcd's certificate must be signed by: TLS on"),
    )
    etcd_cert: Path | None = attrs.field(
        default=None,
        metadata=_doc("client certificate file to present to etcd (with etcd_key): TLS on"),
    )
    etcd_key: Path | None = attrs.field(
        default=None, metadata=_doc("private key file of etcd_cert")
    )
    etcd_user: str = attrs.field(
        default="", metadata=_doc('etcd user to authenticate as (with etcd_password_file); ""')
    )
    etcd_password_file: Path | None = attrs.field(
        default=None, metadata=_doc("file holding etcd_user's password")
    )


@attrs.frozen(kw_only=True)
class Manifest:
    """A whole, valid manifest. `agents` keeps file order (included files after).

    `defaults` is the `[defaults]` table as written: pass it to `agent_from_table` so
    that agents loaded over the API get the same defaults.
    """

    path: Path
    settings: Settings
    agents: dict[str, AgentSpec]
    defaults: dict[str, Any] = attrs.field(factory=dict)


class ManifestError(Exception):
    """The manifest is invalid. `errors` holds every located message, one per problem.

    Each message names the file, the agent and the key, e.g.
    ``agents.toml: agents.web.restart: must be one of "always", "on-failure", "never", not "sometimes"``.
    """

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


# --- The keys as written -------------------------------------------------------------


@attrs.frozen(kw_only=True)
class AgentKeys:
    """The keys one table gives for an agent, type-checked; None means "not given here".

    An agent's keys come in layers, each one structured into this model on its own so
    that its errors name its own file: `[defaults]`, a folder's agent.toml, the
    manifest's `[agents.ID]` table (or an API request's body).
    """

    entry: str | None = attrs.field(
        default=None,
        metadata=_doc(
            'in-process agent: an async callable "module:function", imported with the'
            " manifest's folder first on the import path",
            pattern=ENTRY_PATTERN,
        ),
    )
    command: tuple[str, ...] | str | None = attrs.field(
        default=None,
        metadata=_doc(
            "process agent: the command line, an array or a string split like a shell;"
            " it runs in its own process group",
            non_empty=True,
        ),
    )
    path: str | None = attrs.field(
        default=None,
        metadata=_doc(
            "folder agent: a folder holding agent.toml or agent.json (agent keys) and its"
            ' code; with only an agent.py, the entry is "agent:main" imported from it',
            non_empty=True,
        ),
    )
    params: dict[str, Any] | None = attrs.field(
        default=None, metadata=_doc("free table handed to in-process agents as ctx.params")
    )
    env: dict[str, str] | None = attrs.field(
        default=None, metadata=_doc("environment variables added for processes")
    )
    cwd: str | None = attrs.field(
        default=None,
        metadata=_doc(
            "working directory for processes, relative to the manifest's folder; default:"
            " the manifest's folder, or the agent's folder for a folder agent"
        ),
    )
    restart: RestartMode | None = attrs.field(
        default=None, metadata=_doc("when to restart the agent after it ends")
    )
    success_codes: tuple[int, ...] | None = attrs.field(
        default=None, metadata=_doc("exit codes that are not failures", minimum=0, maximum=255)
    )
    backoff: Backoff | None = attrs.field(
        default=None,
        metadata=_doc("delay before restart n: min(max, initial * factor**(n-1)), ± jitter"),
    )
    reset_after: float | None = attrs.field(
        default=None,
        metadata=_doc("seconds of healthy running that forgive earlier failures", minimum=0),
    )
    max_restarts: int | None = attrs.field(
        default=None,
        metadata=_doc(
            "restarts allowed within restart_window seconds; one more and the agent is failed",
            minimum=0,
        ),
    )
    restart_window: float | None = attrs.field(
        default=None, metadata=_doc("seconds over which max_restarts counts", minimum=0)
    )
    ready: ReadyMode | ReadyProbe | None = attrs.field(
        default=None,
        metadata=_doc(
            '"immediate": running once launched; "notify": the agent says so, with'
            " ctx.ready() or READY=1 on $NOTIFY_SOCKET; or a probe table: once it first passes"
        ),
    )
    start_timeout: float | None = attrs.field(
        default=None,
        metadata=_doc("seconds to become ready; past it, the start is a failure", minimum=0),
    )
    stop_signal: signal.Signals | None = attrs.field(
        default=None,
        metadata=_doc('first signal sent to the process group on stop, e.g. "SIGTERM"'),
    )
    stop_timeout: float | None = attrs.field(
        default=None,
        metadata=_doc(
            "seconds of grace for cleanup; then SIGKILL to the group, or a hard cancel",
            minimum=0,
        ),
    )
    after: tuple[str, ...] | None = attrs.field(
        default=None,
        metadata=_doc("ids that must be running before this agent starts; it stops before them"),
    )
    critical: bool | None = attrs.field(
        default=None,
        metadata=_doc("if this agent ends failed, the supervisor stops everything and exits 3"),
    )
    enabled: bool | None = attrs.field(default=None, metadata=_doc("false: declared but not run"))
    log_lines: int | None = attrs.field(
        default=None,
        metadata=_doc("lines of recent output kept in memory for GET /agents/{id}/logs", minimum=0),
    )
    liveness: Probe | None = attrs.field(
        default=None,
        metadata=_doc(
            "a probe checked while the agent is running; `failures` failed checks in a row"
            " end the run as failed, and the restart policy decides"
        ),
    )
    watchdog: float | None = attrs.field(
        default=None,
        metadata=_doc(
            "seconds: while running, the agent sends WATCHDOG=1 (sd_notify) or calls"
            " ctx.heartbeat() at least this often, or its run fails; 0 is off",
            minimum=0,
        ),
    )
    user: str | None = attrs.field(
        default=None,
        metadata=_doc(
            "process agents: run as this user (name or uid), with its groups and its HOME,"
            ' USER and LOGNAME; needs a supervisor running as root; "" is the supervisor\'s'
        ),
    )
    group: str | None = attrs.field(
        default=None,
        metadata=_doc('process agents: run with this group (name or gid); "" is the user\'s'),
    )


@attrs.frozen(kw_only=True)
class Document:
    """The top level of a manifest file; structured only to check its table names."""

    supervisor: dict[str, Any] = attrs.field(
        factory=dict, metadata=_doc("settings of the supervisor itself")
    )
    defaults: dict[str, Any] = attrs.field(
        factory=dict,
        metadata=_doc(
            "keys every agent gets unless it gives its own; params and env merge key by key"
        ),
    )
    agents: dict[str, Any] = attrs.field(
        factory=dict, metadata=_doc("the agents, by id: [a-z0-9][a-z0-9_.-]{0,62}")
    )


@attrs.frozen(kw_only=True)
class IncludedDocument:
    """The top level of an included file: agents only."""

    agents: dict[str, Any] = attrs.field(factory=dict, metadata=_doc("the agents, by id"))
