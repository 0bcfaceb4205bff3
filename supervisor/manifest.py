"""The manifest: frozen attrs models of SPEC §1, built from TOML once, at the edge.

No other module sees raw TOML dicts: they get a `Manifest` whose agents are fully
resolved `AgentSpec`s (defaults merged, folder agents read, paths absolute, kind known).
Two specs compare equal exactly when the agent would run the same way, so "changed on
reload" is `old != new` (a folder agent's `digest` covers its files).
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


@attrs.frozen(kw_only=True)
class Backoff:
    """Delay before restart n: ``min(max, initial * factor**(n-1))``, ± ``jitter`` fraction."""

    initial: float = 0.5
    max: float = 30.0
    factor: float = 2.0
    jitter: float = 0.1


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
    ready: ReadyMode = "immediate"
    start_timeout: float = 30.0
    stop_signal: signal.Signals = signal.SIGTERM
    stop_timeout: float = 10.0
    after: tuple[str, ...] = ()
    critical: bool = False
    enabled: bool = True


@attrs.frozen(kw_only=True)
class Settings:
    """The `[supervisor]` table."""

    api: str = DEFAULT_API
    shutdown_timeout: float = 30.0
    state_file: Path | None = None
    api_token_file: Path | None = None
    include: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class Manifest:
    """A whole, valid manifest. `agents` keeps file order (included files after)."""

    path: Path
    settings: Settings
    agents: dict[str, AgentSpec]


class ManifestError(Exception):
    """The manifest is invalid. `errors` holds every located message, one per problem.

    Each message names the file, the agent and the key, e.g.
    ``agents.toml: agents.web.restart: must be one of 'always', 'on-failure', 'never', not 'sometimes'``.
    """

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors
