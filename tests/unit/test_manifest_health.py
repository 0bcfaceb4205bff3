"""The health keys of the manifest: `liveness`, probe tables as `ready`, `watchdog`,
`[supervisor] loop_lag_warning` (docs/agents.md, "Health")."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest

from supervisor.manifest import (
    ManifestError,
    Probe,
    ReadyProbe,
    agent_from_table,
    json_schema,
    load,
    spec_to_table,
)

from .test_manifest import errors, loads, write


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_probes_and_watchdog_load_with_their_defaults(here: Path) -> None:
    agents = loads(
        here,
        """
        [agents.web]
        command = "python3 -m http.server 8080"
        liveness = { http = "http://127.0.0.1:8080/healthz" }
        ready = { tcp = "127.0.0.1:8080" }
        [agents.db]
        command = "postgres"
        liveness = { exec = "pg_isready -q", period = 2, failures = 5, initial_delay = 3 }
        ready = { log = "ready to accept connections", timeout = 2 }
        watchdog = 10
        [agents.bot]
        entry = "bot:main"
        watchdog = 2.5
        """,
    )
    web, db, bot = agents["web"], agents["db"], agents["bot"]
    assert web.liveness == Probe(http="http://127.0.0.1:8080/healthz")
    assert (web.liveness.period, web.liveness.timeout, web.liveness.failures) == (10.0, 1.0, 3)
    assert web.ready == ReadyProbe(tcp="127.0.0.1:8080")
    assert isinstance(web.ready, ReadyProbe)
    assert web.ready.period == 0.5
    assert db.liveness == Probe(exec=("pg_isready", "-q"), period=2, failures=5, initial_delay=3)
    assert db.ready == ReadyProbe(log="ready to accept connections", timeout=2)
    assert (db.watchdog, bot.watchdog, web.watchdog) == (10.0, 2.5, 0.0)
    assert bot.liveness is None
    assert bot.ready == "immediate"


def test_loop_lag_warning_setting(here: Path) -> None:
    write(here, {"agents.toml": "[supervisor]\nloop_lag_warning = 0.1\n"})
    assert load(Path("agents.toml")).settings.loop_lag_warning == 0.1
    write(here, {"agents.toml": "[agents.a]\nentry = 'a:b'\n"})
    assert load(Path("agents.toml")).settings.loop_lag_warning == 0.5
    assert errors(here, "[supervisor]\nloop_lag_warning = -1\n") == [
        "agents.toml: supervisor.loop_lag_warning: must be at least 0, not -1"
    ]


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        (
            "liveness = { period = 1 }",
            'agents.a.liveness: needs one of "http", "tcp" or "exec"',
        ),
        (
            'liveness = { http = "http://x/", tcp = "x:1" }',
            'agents.a.liveness: has "http" and "tcp"; give exactly one of "http", "tcp" or "exec"',
        ),
        (
            'liveness = { log = "x" }',
            "agents.a.liveness.log: a log probe can only be a ready probe",
        ),
        (
            'liveness = { htp = "http://x/" }',
            'agents.a.liveness.htp: unknown key; did you mean "http"?',
        ),
        (
            'liveness = { http = "localhost:8080/healthz" }',
            'agents.a.liveness.http: must be an "http://" or "https://" URL with a host,'
            ' not "localhost:8080/healthz"',
        ),
        ('liveness = { tcp = "8080" }', 'agents.a.liveness.tcp: must be "HOST:PORT", not "8080"'),
        (
            'liveness = { tcp = "h:70000" }',
            'agents.a.liveness.tcp: must be "HOST:PORT", not "h:70000"',
        ),
        ("liveness = { exec = [] }", "agents.a.liveness.exec: must not be empty"),
        (
            'liveness = { tcp = "h:1", failures = 0 }',
            "agents.a.liveness.failures: must be at least 1, not 0",
        ),
        (
            'liveness = { tcp = "h:1", period = 0 }',
            "agents.a.liveness.period: must be at least 0.01, not 0",
        ),
        (
            'liveness = { tcp = "h:1", timeout = "1s" }',
            'agents.a.liveness.timeout: must be a number, not "1s"',
        ),
        ('liveness = "http://x/"', 'agents.a.liveness: must be a table, not "http://x/"'),
        (
            'ready = { log = "(" }',
            "agents.a.ready.log: not a regular expression: missing ), unterminated subpattern"
            " at position 0",
        ),
        (
            'ready = { log = "x", exec = "true" }',
            'agents.a.ready: has "exec" and "log"; give exactly one of "http", "tcp", "exec"'
            ' or "log"',
        ),
        (
            'ready = "sometimes"',
            'agents.a.ready: must be one of "immediate", "notify", not "sometimes"',
        ),
        ("watchdog = -1", "agents.a.watchdog: must be at least 0, not -1"),
        ("watchdog = true", "agents.a.watchdog: must be a number, not true"),
    ],
)
def test_bad_health_keys_are_located(here: Path, keys: str, expected: str) -> None:
    assert errors(here, f'[agents.a]\ncommand = "x"\n{keys}\n') == [f"agents.toml: {expected}"]


def test_health_keys_come_from_defaults_and_round_trip(here: Path) -> None:
    agents = loads(
        here,
        """
        [defaults]
        liveness = { tcp = "127.0.0.1:9" }
        watchdog = 3
        [agents.a]
        command = "x"
        ready = { exec = ["test", "-e", "ok"], period = 0.2 }
        [agents.b]
        entry = "b:main"
        liveness = { exec = "true" }
        """,
    )
    assert agents["a"].liveness == Probe(tcp="127.0.0.1:9")
    assert agents["b"].liveness == Probe(exec=("true",))
    for spec in agents.values():
        table = spec_to_table(spec)
        assert "log" not in table["liveness"]  # kinds not given are left out
        assert agent_from_table(spec.id, table, base=here) == spec
    with pytest.raises(ManifestError) as info:
        agent_from_table("c", {"command": "x", "liveness": {}}, base=here)
    assert info.value.errors == ['request: agents.c.liveness: needs one of "http", "tcp" or "exec"']


def test_schema_knows_the_health_keys() -> None:
    schema = jsonschema.Draft202012Validator(json_schema())
    good = {
        "supervisor": {"loop_lag_warning": 1},
        "agents": {
            "a": {"command": "x", "liveness": {"http": "http://h/"}, "ready": {"log": "up"}},
            "b": {"entry": "b:c", "watchdog": 5, "ready": "notify"},
        },
    }
    assert not list(schema.iter_errors(good))
    for bad in ({"liveness": {"log": "x"}}, {"ready": {"tcp": "h:1", "http": "http://h"}}):
        assert list(schema.iter_errors({"agents": {"a": {"command": "x", **bad}}}))
