"""The manifest's resolved attrs models: what a valid manifest is.

`AgentSpec`, `Backoff`, `Settings` and `Manifest` are what the rest of the supervisor
sees (through `supervisor.manifest`, which re-exports them). The tables as a file writes
them are modelled in `supervisor.manifest.keys`.

Each field's metadata (`described`) holds its description and its rules (`minimum`,
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


def described(text: str, **rules: Any) -> dict[str, Any]:
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
        metadata=described(
            'GET this URL, e.g. "http://127.0.0.1:8080/healthz"; any 2xx or 3xx answer passes',
            non_empty=True,
        ),
    )
    tcp: str | None = attrs.field(
        default=None,
        metadata=described('"HOST:PORT": passes when a connection is accepted', non_empty=True),
    )
    exec: tuple[str, ...] | str | None = attrs.field(
        default=None,
        metadata=described(
            "a command run with the agent's env, cwd and user; exit 0 passes", non_empty=True
        ),
    )
    period: float = attrs.field(
        default=10.0, metadata=described("seconds between checks", minimum=0.01)
    )
    timeout: float = attrs.field(
        default=1.0,
        metadata=described("seconds one check may take; past it, it failed", minimum=0.001),
    )
    failures: int = attrs.field(
        default=3, metadata=described("failed checks in a row that end the run", minimum=1)
    )
    initial_delay: float = attrs.field(
        default=0.0,
        metadata=described("seconds after the agent is running before the first check", minimum=0),
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
        metadata=described(
            "a regular expression: passes when a line of the agent's output matches"
        ),
    )
    period: float = attrs.field(
        default=0.5, metadata=described("seconds between checks", minimum=0.01)
    )
    initial_delay: float = attrs.field(
        default=0.0,
        metadata=described("seconds after the agent is launched before the first check", minimum=0),
    )


PROBE_KINDS = ("http", "tcp", "exec", "log")


@attrs.frozen(kw_only=True)
class Backoff:
    """Delay before restart n: ``min(max, initial * factor**(n-1))``, ± ``jitter`` fraction."""

    initial: float = attrs.field(
        default=0.5, metadata=described("seconds to wait before the first restart", minimum=0)
    )
    max: float = attrs.field(
        default=30.0, metadata=described("longest wait, in seconds", minimum=0)
    )
    factor: float = attrs.field(
        default=2.0,
        metadata=described("each further restart waits this many times longer", minimum=1),
    )
    jitter: float = attrs.field(
        default=0.1,
        metadata=described(
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
        metadata=described(
            'control API address: "HOST:PORT", "unix:/path/to.sock", or "" for no API;'
            " --api overrides it"
        ),
    )
    shutdown_timeout: float = attrs.field(
        default=30.0,
        metadata=described("seconds for everything to stop on SIGTERM/SIGINT", minimum=0),
    )
    state_file: Path | None = attrs.field(
        default=None,
        metadata=described(
            'TOML file keeping the agents loaded over the API; "" keeps them in memory'
        ),
    )
    api_token_file: Path | None = attrs.field(
        default=None,
        metadata=described("file holding the API token; $SUPERVISOR_TOKEN also sets it"),
    )
    include: tuple[str, ...] = attrs.field(
        default=(),
        metadata=described(
            "globs relative to this file; included files hold [agents.*] tables only"
        ),
    )
    cluster: str = attrs.field(
        default="",
        metadata=described(
            'share this manifest with other supervisors through etcd: "etcd://HOST:PORT'
            '[,HOST:PORT...][/NAMESPACE]"; "" runs alone; --cluster overrides it',
            pattern=CLUSTER_PATTERN,
        ),
    )
    member: str = attrs.field(
        default="",
        metadata=described(
            'this supervisor\'s name in the cluster, unique there; "" is the host name;'
            " --member overrides it",
            pattern=MEMBER_PATTERN,
        ),
    )
    loop_lag_warning: float = attrs.field(
        default=0.5,
        metadata=described(
            "seconds: an in-process agent holding the event loop longer than this in one step"
            " is named in a warning, counted in /metrics and in its AGENT (blocked); 0 is off",
            minimum=0,
        ),
    )
    lease_ttl: float = attrs.field(
        default=10.0,
        metadata=described(
            "seconds a member that lost etcd keeps its agents' ownership; its agents stop"
            " within half of it, and others take them over after it",
            minimum=1,
        ),
    )
    etcd_ca: Path | None = attrs.field(
        default=None,
        metadata=described("CA certificate file that etcd's certificate must be signed by: TLS on"),
    )
    etcd_cert: Path | None = attrs.field(
        default=None,
        metadata=described("client certificate file to present to etcd (with etcd_key): TLS on"),
    )
    etcd_key: Path | None = attrs.field(
        default=None, metadata=described("private key file of etcd_cert")
    )
    etcd_user: str = attrs.field(
        default="", metadata=described('etcd user to authenticate as (with etcd_password_file); ""')
    )
    etcd_password_file: Path | None = attrs.field(
        default=None, metadata=described("file holding etcd_user's password")
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
