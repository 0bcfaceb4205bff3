"""The manifest: loading, merging, folder agents, and every error message, exactly.

Each test writes real files in a temporary folder and loads them from inside it, so the
messages name files as a user would see them (``agents.toml: agents.web.restart: …``).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import attrs
import jsonschema
import pytest
import rtoml
from hypothesis import given
from hypothesis import strategies as st

from supervisor.manifest import (
    KIND_KEYS,
    AgentSpec,
    Backoff,
    ManifestError,
    Settings,
    agent_from_table,
    json_schema,
    load,
    spec_to_table,
)

REPO = Path(__file__).parents[2]


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary folder that is also the current one, so paths in messages are short."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def errors(root: Path, manifest: str, files: dict[str, str] | None = None) -> list[str]:
    """The errors loading ``agents.toml`` (written with `files`) in `root` gives."""
    write(root, {"agents.toml": manifest, **(files or {})})
    with pytest.raises(ManifestError) as info:
        load(Path("agents.toml"))
    assert str(info.value) == "\n".join(info.value.errors)
    return info.value.errors


def loads(root: Path, manifest: str, files: dict[str, str] | None = None) -> dict[str, AgentSpec]:
    write(root, {"agents.toml": manifest, **(files or {})})
    return load(Path("agents.toml")).agents


# --- What loads -------------------------------------------------------------------------


def test_every_key_loads(here: Path) -> None:
    agents = loads(
        here,
        """
        [agents.web]
        command = ["python3", "-m", "http.server", "0"]
        params = {a = 1, nested = {b = [1, 2]}}
        env = {MODE = "test"}
        cwd = "www"
        restart = "always"
        success_codes = [0, 3]
        backoff = {initial = 1, max = 10.0, factor = 3.0, jitter = 0.0}
        reset_after = 5.0
        max_restarts = 0
        restart_window = 30
        ready = "notify"
        start_timeout = 2.5
        stop_signal = "INT"
        stop_timeout = 0
        after = ["db"]
        critical = true
        enabled = false

        [agents.db]
        entry = "db.main:run"
        """,
    )
    assert agents["web"] == AgentSpec(
        id="web",
        kind="process",
        command=("python3", "-m", "http.server", "0"),
        root=here,
        params={"a": 1, "nested": {"b": [1, 2]}},
        env={"MODE": "test"},
        cwd=here / "www",
        restart="always",
        success_codes=(0, 3),
        backoff=Backoff(initial=1.0, max=10.0, factor=3.0, jitter=0.0),
        reset_after=5.0,
        max_restarts=0,
        restart_window=30.0,
        ready="notify",
        start_timeout=2.5,
        stop_signal=signal.SIGINT,
        stop_timeout=0.0,
        after=("db",),
        critical=True,
        enabled=False,
    )
    assert agents["db"] == AgentSpec(
        id="db", kind="in-process", entry="db.main:run", root=here, cwd=here
    )
    assert list(agents) == ["web", "db"]


def test_settings(here: Path) -> None:
    write(
        here,
        {
            "agents.toml": """
            [supervisor]
            api = "unix:/run/supervisor.sock"
            shutdown_timeout = 5
            state_file = "state/agents.toml"
            api_token_file = "/etc/token"
            """
        },
    )
    assert load(Path("agents.toml")).settings == Settings(
        api="unix:/run/supervisor.sock",
        shutdown_timeout=5.0,
        state_file=here / "state/agents.toml",
        api_token_file=Path("/etc/token"),
    )
    write(here, {"agents.toml": '[supervisor]\nstate_file = ""\napi = ""\n'})
    assert load(Path("agents.toml")).settings == Settings(api="", state_file=None)


def test_defaults_merge_params_and_env_key_by_key_and_replace_the_rest(here: Path) -> None:
    agents = loads(
        here,
        """
        [defaults]
        params = {region = "eu", retries = 3}
        env = {LANG = "C", MODE = "prod"}
        backoff = {initial = 2.0, max = 60.0}
        after = ["db"]
        restart = "always"

        [agents.db]
        command = "db-server"
        after = []

        [agents.web]
        command = "web-server"
        params = {retries = 5, extra = true}
        env = {MODE = "dev"}
        backoff = {factor = 4.0}
        """,
    )
    web = agents["web"]
    assert web.params == {"region": "eu", "retries": 5, "extra": True}
    assert web.env == {"LANG": "C", "MODE": "dev"}
    assert web.backoff == Backoff(factor=4.0)  # replaced whole: initial and max are built-in
    assert (web.after, web.restart) == (("db",), "always")
    assert agents["db"].after == ()
    assert agents["db"].params is not web.params


def test_agents_share_a_cwd_path_but_never_a_params(here: Path) -> None:
    agents = loads(
        here,
        """
        [defaults]
        params = {region = "eu"}
        env = {LANG = "C"}

        [agents.a]
        command = "a"
        cwd = "work"

        [agents.b]
        command = "b"
        cwd = "work"
        """,
    )
    a, b = agents["a"], agents["b"]
    assert a.cwd is b.cwd == here / "work"  # one Path object: specs compare fast
    assert a.params == b.params == {"region": "eu"}
    assert (a.params is not b.params, a.env is not b.env) == (True, True)


def test_a_command_string_is_split_like_a_shell(here: Path) -> None:
    agents = loads(here, """[agents.a]\ncommand = "python3 -c 'print(1)' --flag=\\"x y\\""\n""")
    assert agents["a"].command == ("python3", "-c", "print(1)", "--flag=x y")


def test_x_keys_are_ignored_at_every_level(here: Path) -> None:
    agents = loads(
        here,
        """
        x-top = 1
        [x-tool]
        anything = "goes"
        [supervisor]
        x-note = "s"
        [defaults]
        x-note = "d"
        [agents]
        x-agents-note = "a"
        [agents.web]
        command = "web"
        x-owner = "me"
        backoff = {initial = 1.0, x-why = "slow start"}
        [agents.x-not-an-agent]
        anything = "goes"
        """,
    )
    assert list(agents) == ["web"]
    assert agents["web"].backoff == Backoff(initial=1.0)


def test_include_adds_agents_from_files_matched_by_globs(here: Path) -> None:
    agents = loads(
        here,
        """
        [supervisor]
        include = ["conf.d/*.toml", "more.toml"]
        [defaults]
        restart = "never"
        [agents.main]
        entry = "main:run"
        """,
        {
            "conf.d/b.toml": '[agents.b]\ncommand = "b"\ncwd = "work"\n',
            "conf.d/a.toml": '[agents.a]\npath = "agents/a"\n',
            "more.toml": '[agents.more]\nentry = "more:main"\n',
            "agents/a/agent.py": "async def main(ctx): pass\n",
        },
    )
    assert list(agents) == ["main", "a", "b", "more"]
    # Relative paths in included files resolve against the manifest's folder.
    assert agents["b"].cwd == here / "work"
    assert agents["a"].path == here / "agents" / "a"
    assert {spec.restart for spec in agents.values()} == {"never"}


def test_folder_agent_with_agent_toml(here: Path) -> None:
    agents = loads(
        here,
        """
        [defaults]
        restart = "never"
        stop_timeout = 1.0
        params = {a = "default", b = "default"}
        [agents.bot]
        path = "agents/bot"
        params = {c = "manifest"}
        stop_timeout = 2.0
        """,
        {
            "agents/bot/agent.toml": """
                entry = "bot:main"
                cwd = "data"
                restart = "always"
                stop_timeout = 9.0
                params = {b = "folder", c = "folder"}
            """,
            "agents/bot/bot.py": "async def main(ctx): pass\n",
        },
    )
    bot = agents["bot"]
    folder = here / "agents" / "bot"
    assert (bot.kind, bot.entry, bot.path, bot.root) == ("in-process", "bot:main", folder, folder)
    assert bot.cwd == folder / "data"  # relative to the folder, for a key from its agent.toml
    # Precedence: built-in < [defaults] < the folder's agent.toml < the manifest's table.
    assert (bot.restart, bot.stop_timeout) == ("always", 2.0)
    assert bot.params == {"a": "default", "b": "folder", "c": "manifest"}
    assert len(bot.digest) == 32


def test_folder_agent_with_agent_json_may_be_a_process(here: Path) -> None:
    agents = loads(
        here,
        '[agents.job]\npath = "job"\n',
        {
            "job/agent.json": json.dumps({"command": ["python3", "run.py"], "env": {"A": "1"}}),
        },
    )
    job = agents["job"]
    assert (job.kind, job.command, job.cwd, job.env) == (
        "process",
        ("python3", "run.py"),
        here / "job",
        {"A": "1"},
    )


def test_folder_agent_with_only_agent_py(here: Path) -> None:
    agents = loads(
        here, '[agents.tiny]\npath = "tiny/"\n', {"tiny/agent.py": "async def main(ctx): ...\n"}
    )
    tiny = agents["tiny"]
    assert (tiny.kind, tiny.entry, tiny.root, tiny.cwd) == (
        "in-process",
        "agent:main",
        here / "tiny",
        here / "tiny",
    )


def test_agent_toml_without_kind_next_to_agent_py_runs_agent_main(here: Path) -> None:
    agents = loads(
        here,
        '[agents.t]\npath = "t"\n',
        {
            "t/agent.toml": 'restart = "always"\n',
            "t/agent.py": "async def main(ctx): ...\n",
        },
    )
    assert (agents["t"].entry, agents["t"].restart) == ("agent:main", "always")


def test_digest_changes_when_a_folder_file_changes_and_not_for_caches(here: Path) -> None:
    manifest = '[agents.t]\npath = "t"\n'
    first = loads(here, manifest, {"t/agent.py": "async def main(ctx): ...\n"})["t"]
    write(
        here, {"t/__pycache__/agent.cpython-311.pyc": "junk", "t/x.pyc": "junk", "t/.git/HEAD": "x"}
    )
    assert load(Path("agents.toml")).agents["t"] == first
    write(here, {"t/helper.py": "X = 1\n"})
    second = load(Path("agents.toml")).agents["t"]
    assert second.digest != first.digest
    write(here, {"t/helper.py": "X = 2\n"})
    third = load(Path("agents.toml")).agents["t"]
    assert third.digest not in (first.digest, second.digest)
    assert third != second


def test_example_config_loads() -> None:
    m = load(REPO / "config" / "agents.toml")
    assert {spec.id: spec.kind for spec in m.agents.values()} == {
        "heartbeat": "in-process",
        "ticker": "process",
        "greeter": "in-process",
    }
    assert m.agents["greeter"].path == REPO / "config" / "agents" / "greeter"


# --- What is rejected, and how it is said ------------------------------------------------

REJECTED = [
    # unknown keys, at every level, with a hint when one is close
    (
        '[agents.web]\ncommand = "x"\nrestrat = "always"',
        ['agents.web.restrat: unknown key; did you mean "restart"?'],
    ),
    ('[agents.web]\ncommand = "x"\nbogus = 1', ["agents.web.bogus: unknown key"]),
    ('[agent.web]\ncommand = "x"', ['agent: unknown key; did you mean "agents"?']),
    (
        '[supervisor]\napi_token = "t"',
        ['supervisor.api_token: unknown key; did you mean "api_token_file"?'],
    ),
    (
        '[defaults]\nrestarts = "always"',
        ['defaults.restarts: unknown key; did you mean "restart"?'],
    ),
    (
        '[agents.web]\ncommand = "x"\nbackoff = {inital = 1}',
        ['agents.web.backoff.inital: unknown key; did you mean "initial"?'],
    ),
    # wrong types
    (
        '[agents.web]\ncommand = "x"\nstop_timeout = "5"',
        ['agents.web.stop_timeout: must be a number, not "5"'],
    ),
    (
        '[agents.web]\ncommand = "x"\nmax_restarts = 1.5',
        ["agents.web.max_restarts: must be an integer, not 1.5"],
    ),
    (
        '[agents.web]\ncommand = "x"\nmax_restarts = true',
        ["agents.web.max_restarts: must be an integer, not true"],
    ),
    (
        '[agents.web]\ncommand = "x"\ncritical = 1',
        ["agents.web.critical: must be true or false, not 1"],
    ),
    (
        '[agents.web]\ncommand = "x"\nenv = {PORT = 8000}',
        ["agents.web.env.PORT: must be a string, not 8000"],
    ),
    ('[agents.web]\ncommand = "x"\nparams = "p"', ['agents.web.params: must be a table, not "p"']),
    ('[agents.web]\ncommand = "x"\nafter = "db"', ['agents.web.after: must be an array, not "db"']),
    ('[agents.web]\ncommand = "x"\nafter = [1]', ["agents.web.after[0]: must be a string, not 1"]),
    ('[agents.web]\ncommand = "x"\nbackoff = 3', ["agents.web.backoff: must be a table, not 3"]),
    (
        '[agents.web]\ncommand = "x"\nstop_timeout = inf',
        ["agents.web.stop_timeout: must be a finite number, not inf"],
    ),
    (
        '[agents.web]\ncommand = "x"\ncwd = ["a"]',
        ["agents.web.cwd: must be a string, not an array"],
    ),
    (
        "[agents.web]\ncommand = 5",
        ["agents.web.command: must be an array of strings or a string, not 5"],
    ),
    ("[agents.web]\ncommand = []", ["agents.web.command: must not be empty"]),
    ('[agents.web]\ncommand = ["a", 1]', ["agents.web.command[1]: must be a string, not 1"]),
    (
        '[agents.web]\ncommand = "python3 -c \'x"',
        ['agents.web.command: cannot split "python3 -c \'x" like a shell: No closing quotation'],
    ),
    ("[agents]\nweb = 1", ["agents.web: must be a table, not 1"]),
    ("agents = 1", ["agents: must be a table, not 1"]),
    ('[supervisor]\ninclude = "x.toml"', ['supervisor.include: must be an array, not "x.toml"']),
    ("[supervisor]\nstate_file = 1", ["supervisor.state_file: must be a string, not 1"]),
    # kinds
    (
        '[agents.web]\nentry = "a:b"\ncommand = "x"',
        ['agents.web: has "entry" and "command"; give exactly one of "entry", "command" or "path"'],
    ),
    (
        '[agents.web]\nentry = "a:b"\ncommand = "x"\npath = "p"',
        [
            'agents.web: has "entry", "command" and "path"; give exactly one of "entry", "command" or "path"'
        ],
    ),
    ('[agents.web]\nrestart = "always"', ['agents.web: needs one of "entry", "command" or "path"']),
    (
        '[defaults]\ncommand = "x"',
        ["defaults.command: not allowed in [defaults]: each agent says what it runs"],
    ),
    (
        '[agents.web]\nentry = "app.main"',
        ['agents.web.entry: must be "module:function", like "app.worker:main", not "app.main"'],
    ),
    # ids
    (
        '[agents.Web]\ncommand = "x"',
        [
            'agents.Web: bad id: use 1 to 63 of a-z, 0-9, "_", "." and "-", starting with a letter or digit'
        ],
    ),
    (
        '[agents."my agent"]\ncommand = "x"',
        [
            'agents."my agent": bad id: use 1 to 63 of a-z, 0-9, "_", "." and "-", starting with a letter or digit'
        ],
    ),
    (
        f'[agents.{"a" * 64}]\ncommand = "x"',
        [
            f'agents.{"a" * 64}: bad id: use 1 to 63 of a-z, 0-9, "_", "." and "-", starting with a letter or digit'
        ],
    ),
    (
        '[agents.api.v2]\nentry = "api:main"',
        [
            'agents.api: needs one of "entry", "command" or "path"; for the id "api.v2", quote it:'
            ' [agents."api.v2"]',
            "agents.api.v2: unknown key",
        ],
    ),
    # signals
    (
        '[agents.web]\ncommand = "x"\nstop_signal = "SIGTREM"',
        ['agents.web.stop_signal: unknown signal "SIGTREM"; did you mean "SIGTERM"?'],
    ),
    (
        '[agents.web]\ncommand = "x"\nstop_signal = "QUITE"',
        ['agents.web.stop_signal: unknown signal "QUITE"; did you mean "SIGQUIT"?'],
    ),
    (
        '[agents.web]\ncommand = "x"\nstop_signal = 15',
        ['agents.web.stop_signal: must be a signal name like "SIGTERM", not 15'],
    ),
    # limits
    (
        '[agents.web]\ncommand = "x"\nstop_timeout = -1',
        ["agents.web.stop_timeout: must be at least 0, not -1"],
    ),
    (
        '[agents.web]\ncommand = "x"\nstart_timeout = -0.5',
        ["agents.web.start_timeout: must be at least 0, not -0.5"],
    ),
    (
        '[agents.web]\ncommand = "x"\nreset_after = -1',
        ["agents.web.reset_after: must be at least 0, not -1"],
    ),
    (
        '[agents.web]\ncommand = "x"\nrestart_window = -60',
        ["agents.web.restart_window: must be at least 0, not -60"],
    ),
    (
        '[agents.web]\ncommand = "x"\nmax_restarts = -1',
        ["agents.web.max_restarts: must be at least 0, not -1"],
    ),
    (
        '[agents.web]\ncommand = "x"\nbackoff = {factor = 0.5}',
        ["agents.web.backoff.factor: must be at least 1, not 0.5"],
    ),
    (
        '[agents.web]\ncommand = "x"\nbackoff = {jitter = 2}',
        ["agents.web.backoff.jitter: must be between 0 and 1, not 2"],
    ),
    (
        '[agents.web]\ncommand = "x"\nbackoff = {initial = -1}',
        ["agents.web.backoff.initial: must be at least 0, not -1"],
    ),
    (
        '[agents.web]\ncommand = "x"\nsuccess_codes = [0, 256]',
        ["agents.web.success_codes[1]: must be between 0 and 255, not 256"],
    ),
    (
        "[supervisor]\nshutdown_timeout = -1",
        ["supervisor.shutdown_timeout: must be at least 0, not -1"],
    ),
    ("[defaults]\nstop_timeout = -1", ["defaults.stop_timeout: must be at least 0, not -1"]),
    # enums
    (
        '[agents.web]\ncommand = "x"\nrestart = "sometimes"',
        ['agents.web.restart: must be one of "always", "on-failure", "never", not "sometimes"'],
    ),
    (
        '[agents.web]\ncommand = "x"\nready = true',
        ['agents.web.ready: must be "immediate", "notify" or a probe table, not true'],
    ),
    # other values
    (
        '[agents.web]\ncommand = "x"\nenv = {"A=B" = "c"}',
        ['agents.web.env."A=B": must be a variable name, without "="'],
    ),
    (
        '[supervisor]\napi = "7070"',
        ['supervisor.api: must be "HOST:PORT", "unix:/path/to.sock" or "" (no API), not "7070"'],
    ),
    (
        '[supervisor]\napi = "localhost:http"',
        [
            'supervisor.api: must be "HOST:PORT", "unix:/path/to.sock" or "" (no API), not "localhost:http"'
        ],
    ),
    # after
    (
        '[agents.web]\ncommand = "x"\nafter = ["dbb"]\n[agents.db]\ncommand = "x"',
        ['agents.web.after: unknown agent "dbb"; did you mean "db"?'],
    ),
    (
        '[agents.web]\ncommand = "x"\nafter = ["web"]',
        ["agents.web.after: an agent cannot come after itself"],
    ),
    (
        '[agents.a]\ncommand = "x"\nafter = ["b"]\n[agents.b]\ncommand = "x"\nafter = ["a"]',
        ["agents.a.after: cycle: a -> b -> a"],
    ),
    (
        '[agents.c]\ncommand = "x"\nafter = ["a"]\n'
        '[agents.b]\ncommand = "x"\nafter = ["c"]\n'
        '[agents.a]\ncommand = "x"\nafter = ["b"]\n'
        '[agents.z]\ncommand = "x"\nafter = ["y"]\n'
        '[agents.y]\ncommand = "x"\nafter = ["z", "c"]\n',
        ["agents.c.after: cycle: c -> a -> b -> c", "agents.z.after: cycle: z -> y -> z"],
    ),
    # syntax
    (
        "[agents.web]\ncommand = x\n",
        ["line 2, column 11: invalid TOML: string values must be quoted, expected literal string"],
    ),
    (
        '[agents.web]\ncommand = "x"\n[agents.web]\n',
        ["line 3, column 9: invalid TOML: duplicate key"],
    ),
]


@pytest.mark.parametrize(("manifest", "expected"), REJECTED)
def test_rejected(here: Path, manifest: str, expected: list[str]) -> None:
    assert errors(here, manifest) == [f"agents.toml: {message}" for message in expected]


def test_every_error_is_reported_at_once(here: Path) -> None:
    assert errors(
        here,
        """
        [supervisor]
        shutdown_timout = 3
        api = "7070"

        [agents.web]
        command = "web"
        restrat = "always"
        stop_timeout = -1
        after = ["nope"]

        [agents.db]
        entry = "db:main"
        command = "db"
        """,
    ) == [
        'agents.toml: supervisor.shutdown_timout: unknown key; did you mean "shutdown_timeout"?',
        'agents.toml: supervisor.api: must be "HOST:PORT", "unix:/path/to.sock" or "" (no API), not "7070"',
        'agents.toml: agents.web.restrat: unknown key; did you mean "restart"?',
        "agents.toml: agents.web.stop_timeout: must be at least 0, not -1",
        'agents.toml: agents.db: has "entry" and "command"; give exactly one of "entry", "command" or "path"',
        'agents.toml: agents.web.after: unknown agent "nope"',
    ]


def test_problems_of_one_table_are_reported_in_the_order_of_its_keys(here: Path) -> None:
    # In the order written, not the model's, whether or not a value fails to structure.
    assert errors(
        here,
        """
        [agents.web]
        stop_timeout = -1
        command = "web"
        reset_after = -2
        success_codes = [300]

        [agents.db]
        stop_timeout = -1
        command = "db"
        restart = "sometimes"
        max_restarts = -3
        x-note = "mine"
        """,
    ) == [
        "agents.toml: agents.web.stop_timeout: must be at least 0, not -1",
        "agents.toml: agents.web.reset_after: must be at least 0, not -2",
        "agents.toml: agents.web.success_codes[0]: must be between 0 and 255, not 300",
        'agents.toml: agents.db.restart: must be one of "always", "on-failure", "never",'
        ' not "sometimes"',
        "agents.toml: agents.db.stop_timeout: must be at least 0, not -1",
        "agents.toml: agents.db.max_restarts: must be at least 0, not -3",
    ]


def test_a_missing_manifest(here: Path) -> None:
    with pytest.raises(ManifestError) as info:
        load(Path("nope.toml"))
    assert info.value.errors == ["nope.toml: cannot read: No such file or directory"]


def test_folder_problems_name_the_file_they_are_in(here: Path) -> None:
    (here / "a-file").write_text("")
    (here / "empty").mkdir()
    assert errors(
        here,
        """
        [agents.file]
        path = "a-file"
        [agents.missing]
        path = "missing"
        [agents.empty]
        path = "empty"
        [agents.both]
        path = "both"
        [agents.bad]
        path = "agents/bad"
        [agents.nested]
        path = "nested"
        [agents.nokind]
        path = "nokind"
        [agents.twokinds]
        path = "twokinds"
        [agents.broken]
        path = "broken"
        [agents.badjson]
        path = "badjson"
        [agents.listjson]
        path = "listjson"
        """,
        {
            "both/agent.toml": 'entry = "a:b"\n',
            "both/agent.json": '{"entry": "a:b"}',
            "agents/bad/agent.toml": 'entry = "bad:main"\nrestart = "sometimes"\nstop_timeout = -1\n',
            "nested/agent.toml": 'path = "elsewhere"\n',
            "nokind/agent.toml": 'restart = "always"\n',
            "twokinds/agent.toml": 'entry = "a:b"\ncommand = "x"\n',
            "broken/agent.toml": "entry = \n",
            "badjson/agent.json": '{"entry": "a:b",}',
            "listjson/agent.json": "[]",
        },
    ) == [
        'agents.toml: agents.file.path: "a-file" is not a folder',
        'agents.toml: agents.missing.path: "missing" does not exist',
        'agents.toml: agents.empty.path: no agent.toml, agent.json or agent.py in "empty"',
        'agents.toml: agents.both.path: "both" has both agent.toml and agent.json; keep one',
        'agents/bad/agent.toml: agents.bad.restart: must be one of "always", "on-failure", "never", not "sometimes"',
        "agents/bad/agent.toml: agents.bad.stop_timeout: must be at least 0, not -1",
        "nested/agent.toml: agents.nested.path: not allowed in agent.toml: the folder is the agent",
        'nokind/agent.toml: agents.nokind: needs one of "entry" or "command" (or add an agent.py)',
        'twokinds/agent.toml: agents.twokinds: has "entry" and "command"; give exactly one of "entry" or "command"',
        "broken/agent.toml: line 1, column 9: invalid TOML: string values must be quoted, expected literal string",
        "badjson/agent.json: line 1, column 17: invalid JSON: Expecting property name enclosed in double quotes",
        "listjson/agent.json: must hold an object of agent keys, not an array",
    ]


def test_include_problems_name_the_included_file(here: Path) -> None:
    assert errors(
        here,
        """
        [supervisor]
        include = ["conf.d/*.toml", "extra.toml", "none/*.toml"]
        [agents.web]
        command = "web"
        """,
        {
            "conf.d/a.toml": """
                [supervisor]
                api = ""
                [defaults]
                restart = "never"
                [agents.web]
                command = "other web"
                [agents.ok]
                command = "ok"
                restart = "sometimes"
                [agent.typo]
                command = "x"
            """,
            "conf.d/b.toml": "[agents.b\n",
        },
    ) == [
        'agents.toml: supervisor.include[1]: no such file "extra.toml"',
        "conf.d/a.toml: supervisor: not allowed in an included file, which holds [agents.*] only",
        "conf.d/a.toml: defaults: not allowed in an included file, which holds [agents.*] only",
        'conf.d/a.toml: agent: unknown key; did you mean "agents"?',
        "conf.d/a.toml: agents.web: already declared in agents.toml",
        'conf.d/a.toml: agents.ok.restart: must be one of "always", "on-failure", "never", not "sometimes"',
        "conf.d/b.toml: line 1, column 10: invalid TOML: unclosed table, expected `]`",
    ]


def test_a_folder_named_in_an_included_file_is_shown_from_the_manifest(here: Path) -> None:
    write(here, {"config/agents/x/agent.toml": 'entry = "x:main"\nrestart = "no"\n'})
    write(here, {"config/conf.d/x.toml": '[agents.x]\npath = "agents/x"\n'})
    write(here, {"config/agents.toml": '[supervisor]\ninclude = ["conf.d/*.toml"]\n'})
    with pytest.raises(ManifestError) as info:
        load(Path("config/agents.toml"))
    assert info.value.errors == [
        "config/agents/x/agent.toml: agents.x.restart:"
        ' must be one of "always", "on-failure", "never", not "no"'
    ]


def test_odd_keys_are_only_unknown_keys(here: Path) -> None:
    assert errors(here, '[agents.web]\ncommand = "x"\n__class__ = 1\n__init__ = 2\n') == [
        "agents.toml: agents.web.__class__: unknown key",
        "agents.toml: agents.web.__init__: unknown key",
    ]


def test_after_may_name_agents_of_included_files(here: Path) -> None:
    agents = loads(
        here,
        '[supervisor]\ninclude = ["db.toml"]\n[agents.web]\ncommand = "web"\nafter = ["db"]\n',
        {
            "db.toml": '[agents.db]\ncommand = "db"\n',
        },
    )
    assert agents["web"].after == ("db",)


# --- agent_from_table and spec_to_table: the API's way in and out ------------------------


def test_agent_from_table_builds_a_spec_with_defaults(tmp_path: Path) -> None:
    spec = agent_from_table(
        "job",
        {"command": "run --fast", "params": {"b": 2}, "after": ["db"]},
        base=tmp_path,
        defaults={"params": {"a": 1}, "restart": "always"},
        known_ids=["db"],
    )
    assert spec == AgentSpec(
        id="job",
        kind="process",
        command=("run", "--fast"),
        root=tmp_path,
        cwd=tmp_path,
        params={"a": 1, "b": 2},
        restart="always",
        after=("db",),
    )


def test_agent_from_table_names_a_path_agent_after_its_folder(tmp_path: Path) -> None:
    write(tmp_path, {"agents/crawler/agent.py": "async def main(ctx): ...\n"})
    spec = agent_from_table(None, {"path": "agents/crawler"}, base=tmp_path)
    assert (spec.id, spec.entry, spec.path) == (
        "crawler",
        "agent:main",
        tmp_path / "agents/crawler",
    )


def test_agent_from_table_rejections_use_the_label(tmp_path: Path) -> None:
    write(tmp_path, {"Bad_Name/agent.py": "async def main(ctx): ...\n"})
    cases: list[tuple[str | None, dict[str, Any], list[str]]] = [
        (
            None,
            {"command": "x"},
            ['request: id: required, unless "path" names the agent\'s folder'],
        ),
        (
            None,
            {"path": "Bad_Name"},
            [
                'request: agents.Bad_Name: bad id: use 1 to 63 of a-z, 0-9, "_", "." and "-", starting'
                ' with a letter or digit (it is the folder\'s name; give an "id")'
            ],
        ),
        (
            "x-tool",
            {"command": "x"},
            ['request: agents.x-tool: bad id: ids starting with "x-" are kept for tools'],
        ),
        (
            "job",
            {"command": "x", "after": ["job"]},
            ["request: agents.job.after: an agent cannot come after itself"],
        ),
        (
            "job",
            {"command": "x", "after": ["dbx"]},
            ['request: agents.job.after: unknown agent "dbx"; did you mean "db"?'],
        ),
        (
            "job",
            {"command": "x", "restart": "no"},
            [
                'request: agents.job.restart: must be one of "always", "on-failure", "never", not "no"'
            ],
        ),
        ("job", {"command": "x", "id": "job"}, ["request: agents.job.id: unknown key"]),
        ("job", {"command": None, "entry": "a:b"}, []),  # null is "not given"
        (
            "job",
            {"entry": "a:b", "params": {"a": [1, None], "b": {"c": None}}},
            [
                "request: agents.job.params.a[1]: must not be null (TOML has no null; leave the key out)",
                "request: agents.job.params.b.c: must not be null (TOML has no null; leave the key out)",
            ],
        ),
        (
            "job",
            {"entry": "a:b", "stop_timeout": 1e400},
            ["request: agents.job.stop_timeout: must be a finite number, not inf"],
        ),
    ]
    for agent_id, table, expected in cases:
        if not expected:
            agent_from_table(agent_id, table, base=tmp_path, known_ids=["db"])
            continue
        with pytest.raises(ManifestError) as info:
            agent_from_table(agent_id, table, base=tmp_path, known_ids=["db"])
        assert info.value.errors == expected


def test_spec_to_table_round_trips_a_loaded_manifest(here: Path) -> None:
    manifest = loads(
        here,
        """
        [defaults]
        params = {region = "eu"}
        [agents.web]
        command = "python3 -m http.server 0"
        env = {A = "1"}
        cwd = "www"
        backoff = {initial = 1.0}
        stop_signal = "HUP"
        after = ["bot"]
        success_codes = [0, 2]
        [agents.bot]
        path = "bot"
        params = {n = 1}
        critical = true
        [agents.db]
        entry = "db:main"
        enabled = false
        """,
        {"bot/agent.toml": 'entry = "bot:main"\ncwd = "data"\nparams = {m = 2}\n'},
    )
    for spec in manifest.values():
        table = spec_to_table(spec)
        assert json.loads(json.dumps(table)) == table  # JSON-safe as it is
        again = agent_from_table(spec.id, table, base=here, known_ids=list(manifest))
        assert again == spec
    assert spec_to_table(manifest["web"])["stop_signal"] == "SIGHUP"
    assert spec_to_table(manifest["bot"])["path"] == str(here / "bot")


def test_spec_to_table_writes_dates_in_params_as_text(here: Path) -> None:
    spec = loads(here, '[agents.a]\nentry = "a:b"\nparams = {when = 1979-05-27T07:32:00Z}\n')["a"]
    assert spec_to_table(spec)["params"] == {"when": "1979-05-27T07:32:00+00:00"}


def test_spec_to_table_keys() -> None:
    table = spec_to_table(
        AgentSpec(id="a", kind="in-process", entry="m:f", root=Path("/r"), cwd=Path("/r"))
    )
    assert table == {
        "entry": "m:f",
        "params": {},
        "env": {},
        "cwd": "/r",
        "restart": "on-failure",
        "success_codes": [0],
        "backoff": {"initial": 0.5, "max": 30.0, "factor": 2.0, "jitter": 0.1},
        "reset_after": 60.0,
        "max_restarts": 5,
        "restart_window": 60.0,
        "ready": "immediate",
        "start_timeout": 30.0,
        "stop_signal": "SIGTERM",
        "stop_timeout": 10.0,
        "after": [],
        "critical": False,
        "enabled": True,
        "log_lines": 1000,
        "watchdog": 0.0,
        "user": "",
        "group": "",
    }


# --- Property tests: random valid agents -------------------------------------------------

IDS = st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,10}", fullmatch=True).filter(
    lambda s: not s.startswith("x-")
)
WORDS = st.text(st.characters(codec="utf-8", exclude_characters="\0"), min_size=1, max_size=8)
SECONDS = st.floats(0, 1e6, allow_nan=False) | st.integers(0, 10**6)
JSON = st.recursive(
    st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | WORDS,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(WORDS, children, max_size=3),
    max_leaves=8,
)
OPTIONAL_KEYS: dict[str, st.SearchStrategy[Any]] = {
    "params": st.dictionaries(WORDS, JSON, max_size=4),
    "env": st.dictionaries(
        st.from_regex(r"[A-Z_][A-Z0-9_]{0,8}", fullmatch=True), WORDS, max_size=3
    ),
    "cwd": st.sampled_from(["", ".", "work", "/srv/app", "../up"]),
    "restart": st.sampled_from(["always", "on-failure", "never"]),
    "success_codes": st.lists(st.integers(0, 255), max_size=3),
    "backoff": st.fixed_dictionaries(
        {},
        optional={
            "initial": SECONDS,
            "max": SECONDS,
            "factor": st.floats(1, 10),
            "jitter": st.floats(0, 1),
        },
    ),
    "reset_after": SECONDS,
    "max_restarts": st.integers(0, 1000),
    "restart_window": SECONDS,
    "ready": st.sampled_from(["immediate", "notify"])
    | st.fixed_dictionaries(
        {"log": st.sampled_from(["^ready", r"listening on \d+"])},
        optional={"period": st.floats(0.01, 100), "initial_delay": SECONDS},
    ),
    "liveness": st.one_of(
        st.fixed_dictionaries({"http": st.just("http://127.0.0.1:8080/healthz")}),
        st.fixed_dictionaries({"tcp": st.just("127.0.0.1:5432")}),
        st.fixed_dictionaries({"exec": st.lists(WORDS, min_size=1, max_size=3)}),
    ).map(lambda probe: {**probe, "failures": 2}),
    "watchdog": SECONDS,
    "start_timeout": SECONDS,
    "stop_signal": st.sampled_from(["SIGTERM", "TERM", "SIGINT", "HUP", "SIGUSR1"]),
    "stop_timeout": SECONDS,
    "after": st.lists(st.sampled_from(["db", "cache"]), max_size=2),
    "critical": st.booleans(),
    "enabled": st.booleans(),
    "x-anything": JSON,
}
KIND = st.one_of(
    st.fixed_dictionaries({"entry": st.sampled_from(["app:main", "pkg.mod:obj.run"])}),
    st.fixed_dictionaries({"command": st.lists(WORDS, min_size=1, max_size=4)}),
    st.fixed_dictionaries({"command": st.sampled_from(["python3 -u worker.py", "sleep 1"])}),
)


@st.composite
def agent_tables(draw: st.DrawFn) -> dict[str, Any]:
    keys = draw(st.lists(st.sampled_from(sorted(OPTIONAL_KEYS)), unique=True))
    table = {key: draw(OPTIONAL_KEYS[key]) for key in keys}
    return {**draw(KIND), **table}


@given(agent_id=IDS.filter(lambda i: i not in ("db", "cache")), table=agent_tables())
def test_random_valid_agents_round_trip_and_match_the_schema(
    agent_id: str, table: dict[str, Any]
) -> None:
    base = Path("/srv/manifest")
    known = ["db", "cache"]
    spec = agent_from_table(agent_id, table, base=base, known_ids=known)
    assert agent_from_table(agent_id, spec_to_table(spec), base=base, known_ids=known) == spec
    # Through TOML text, as a state file would keep it.
    from_toml = rtoml.loads(rtoml.dumps({"agents": {agent_id: spec_to_table(spec)}}))
    assert (
        agent_from_table(agent_id, from_toml["agents"][agent_id], base=base, known_ids=known)
        == spec
    )
    SCHEMA.validate({"agents": {agent_id: table}})


BAD_VALUES: list[tuple[str, Any]] = [
    ("restart", "sometimes"),
    ("ready", "later"),
    ("stop_timeout", -1),
    ("stop_timeout", "5"),
    ("start_timeout", True),
    ("max_restarts", 1.5),
    ("max_restarts", -1),
    ("success_codes", [300]),
    ("success_codes", 0),
    ("after", "db"),
    ("env", {"A": 1}),
    ("params", []),
    ("backoff", {"factor": 0.5}),
    ("backoff", {"jitter": 1.5}),
    ("backoff", {"slow": 1}),
    ("stop_signal", "SIGNOPE"),
    ("critical", "yes"),
    ("restrat", "always"),
    ("command", ""),
    ("path", 3),
    ("path", ""),
    ("entry", "app.main"),
    ("entry", "app:"),
]


@given(table=agent_tables(), bad=st.sampled_from(BAD_VALUES))
def test_the_schema_and_the_loader_reject_the_same_mistakes(
    table: dict[str, Any], bad: tuple[str, Any]
) -> None:
    key, value = bad
    if key in KIND_KEYS:
        table = {k: v for k, v in table.items() if k not in ("entry", "command")}
    table = {**table, key: value}
    with pytest.raises(ManifestError):
        agent_from_table("a", table, base=Path("/srv"), known_ids=["db", "cache"])
    assert not SCHEMA.is_valid({"agents": {"a": table}})


# --- JSON Schema ---------------------------------------------------------------------------

SCHEMA = jsonschema.Draft202012Validator(json_schema())


def test_the_schema_is_a_valid_draft_2020_12_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(json_schema())


def test_the_schema_describes_every_key_with_its_default() -> None:
    schema = json_schema()
    agent = schema["$defs"]["agent"]["properties"]
    assert agent["restart"] == {
        "type": "string",
        "enum": ["always", "on-failure", "never"],
        "description": "when to restart the agent after it ends",
        "default": "on-failure",
    }
    assert agent["success_codes"]["items"] == {"type": "integer", "minimum": 0, "maximum": 255}
    assert agent["backoff"]["default"] == {
        "initial": 0.5,
        "max": 30.0,
        "factor": 2.0,
        "jitter": 0.1,
    }
    assert agent["stop_signal"]["default"] == "SIGTERM"
    assert "TERM" in agent["stop_signal"]["enum"]
    assert "command" not in schema["$defs"]["defaults"]["properties"]
    assert "default" not in agent["command"]
    assert schema["$defs"]["supervisor"]["properties"]["state_file"]["default"] == ""
    assert schema["$defs"]["supervisor"]["properties"]["api"]["default"] == "127.0.0.1:7070"
    for definition in schema["$defs"].values():
        for name, prop in definition["properties"].items():
            assert prop["description"], name


@given(key=st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,62}", fullmatch=True))
def test_the_schema_takes_ids_as_the_loader_does(key: str) -> None:
    agents = json_schema()["properties"]["agents"]["patternProperties"]
    patterns = [pattern for pattern in agents if re.search(pattern, key)]
    assert patterns == (["^x-"] if key.startswith("x-") else [next(iter(agents))])


def test_the_example_config_validates_against_the_schema() -> None:
    SCHEMA.validate(rtoml.loads((REPO / "config" / "agents.toml").read_text()))


@pytest.mark.parametrize(
    "broken",
    [
        '[agents.web]\ncommand = "x"\nrestrat = "always"\n',
        '[agents.web]\nentry = "a:b"\ncommand = "x"\n',
        "[agents.web]\nstop_timeout = 1.0\n",
        '[agents.Web]\ncommand = "x"\n',
        '[agents.web]\ncommand = "x"\nenv = {PORT = 8000}\n',
        '[supervisor]\nshutdown_timeout = "30"\n',
        '[defaults]\nentry = "a:b"\n',
        '[agent.web]\ncommand = "x"\n',
    ],
)
def test_a_broken_manifest_does_not_validate_against_the_schema(broken: str) -> None:
    example = rtoml.loads((REPO / "config" / "agents.toml").read_text())
    doc = rtoml.loads(broken)
    for table, value in doc.items():
        example[table] = {**example.get(table, {}), **value}
    assert not SCHEMA.is_valid(example)


# --- The CLI -----------------------------------------------------------------------------


def run_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "supervisor", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_a_valid_manifest(tmp_path: Path) -> None:
    write(tmp_path, {"agents.toml": '[agents.a]\nentry = "a:main"\n[agents.b]\ncommand = "b"\n'})
    done = run_cli(tmp_path, "check", "agents.toml")
    assert (done.returncode, done.stdout, done.stderr) == (
        0,
        "agents.toml: ok, 2 agents (1 in-process, 1 process)\n",
        "",
    )


def test_check_an_invalid_manifest(tmp_path: Path) -> None:
    write(
        tmp_path,
        {"agents.toml": '[agents.a]\nentry = "a:main"\nrestart = "sometimes"\n[agents.b]\n'},
    )
    done = run_cli(tmp_path, "check", "agents.toml")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        'agents.toml: agents.a.restart: must be one of "always", "on-failure", "never", not "sometimes"\n'
        'agents.toml: agents.b: needs one of "entry", "command" or "path"\n'
        "agents.toml: invalid (2 errors)\n"
    )


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({}, "agents.toml: cannot read: No such file or directory\n"),
        (
            {"agents.toml": "[agents.a\n"},
            "agents.toml: line 1, column 10: invalid TOML: unclosed table, expected `]`\n",
        ),
    ],
)
def test_check_never_shows_a_traceback(
    tmp_path: Path, files: dict[str, str], expected: str
) -> None:
    write(tmp_path, files)
    done = run_cli(tmp_path, "check", "agents.toml")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr == expected + "agents.toml: invalid (1 error)\n"


def test_check_a_manifest_that_is_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "agents.toml").write_bytes(b"[agents.a]\ncommand = '\xff'\n")
    done = run_cli(tmp_path, "check", "agents.toml")
    assert (done.returncode, done.stderr) == (
        2,
        "agents.toml: not UTF-8 text (invalid start byte at byte 22)\nagents.toml: invalid (1 error)\n",
    )


def test_schema_prints_the_json_schema(tmp_path: Path) -> None:
    done = run_cli(tmp_path, "schema")
    assert done.returncode == 0
    assert json.loads(done.stdout) == json_schema()


def test_a_reload_reuses_the_specs_of_unchanged_agents(tmp_path: Path) -> None:
    """An unchanged agent's spec comes back as the same object (cheap to build and to
    compare); a changed table or [defaults] builds anew; folder agents always do."""
    (tmp_path / "bot").mkdir()
    (tmp_path / "bot" / "agent.py").write_text("async def main(ctx): pass\n")
    m = tmp_path / "agents.toml"
    base = '[agents.a]\ncommand = "sleep 1"\n[agents.b]\ncommand = "sleep 2"\n'
    m.write_text(base + '[agents.bot]\npath = "bot"\n')
    first = load(m)
    m.write_text(base.replace("sleep 2", "sleep 3") + '[agents.bot]\npath = "bot"\n')
    second = load(m)
    assert second.agents["a"] is first.agents["a"]
    assert second.agents["b"].command == ("sleep", "3")
    assert second.agents["bot"] is not first.agents["bot"]
    assert second.agents["bot"] == first.agents["bot"]
    m.write_text("[defaults]\nstop_timeout = 3.0\n" + base + '[agents.bot]\npath = "bot"\n')
    third = load(m)
    assert third.agents["a"] is not second.agents["a"]
    assert third.agents["a"].stop_timeout == 3.0


def test_agents_written_alike_are_checked_once_each_with_its_own_spec(here: Path) -> None:
    """Equal tables are structured once per load (docs/performance.md); each agent still
    gets its own spec, id and params, and a problem is reported for every one of them."""
    alike = 'entry = "m:main"\nparams = {gen = 0, tags = ["x"]}\nenv = {A = "1"}\n'
    agents = loads(here, "".join(f"[agents.a{i}]\n{alike}" for i in range(3)))
    a0, a1, a2 = agents.values()
    assert [a.id for a in (a0, a1, a2)] == ["a0", "a1", "a2"]
    assert attrs.evolve(a1, id="a0") == a0 == attrs.evolve(a2, id="a0")
    assert a0.params is not a1.params
    assert a1.params is not a2.params
    assert a0.env is not a1.env
    assert a1.env is not a2.env
    bad = 'command = "true"\nstop_timeout = -1\n'
    found = errors(here, "".join(f"[agents.b{i}]\n{bad}" for i in range(2)))
    assert [line.split(":")[1].strip() for line in found] == [
        "agents.b0.stop_timeout",
        "agents.b1.stop_timeout",
    ]


def test_a_reload_reuses_a_spec_only_for_the_same_table(tmp_path: Path) -> None:
    m = tmp_path / "agents.toml"
    m.write_text('[agents.a]\ncommand = "true"\ncritical = true\n[agents.b]\ncommand = "true"\n')
    first = load(m)
    m.write_text('[agents.a]\ncommand = "true"\ncritical = false\n[agents.b]\ncommand = "true"\n')
    second = load(m)
    assert second.agents["b"] is first.agents["b"]
    assert (first.agents["a"].critical, second.agents["a"].critical) == (True, False)


def test_an_unknown_user_or_group_is_a_located_error(here: Path) -> None:
    found = errors(
        here, '[agents.a]\ncommand = "true"\nuser = "no-such-user-x"\ngroup = "no-such-group-x"\n'
    )
    assert found == [
        'agents.toml: agents.a.user: unknown user "no-such-user-x" on this machine',
        'agents.toml: agents.a.group: unknown group "no-such-group-x" on this machine',
    ]
    spec = loads(here, '[agents.a]\ncommand = "true"\nuser = "nobody"\ngroup = "0"\n')["a"]
    assert (spec.user, spec.group) == ("nobody", "0")
