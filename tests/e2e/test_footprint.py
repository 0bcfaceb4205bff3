"""What `supervisor run` loads: only what it uses (docs/performance.md#what-limits-ours).

Every module imported at start costs start time before the first agent is spawned, and
memory for as long as the supervisor runs.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# Loaded only when used: the metrics library at the first scrape of /metrics, watchfiles
# with --watch, the JSON Schema builder for `supervisor schema`, the etcd client
# (httpx) and the cluster's models in cluster mode, the in-process runner at the first
# in-process agent, the TOML writer at the first write of the state file, and what a
# manifest needs only for a mistake (difflib), a command written as a string (shlex) or
# a TOML date (datetime). Loading the manifest of process agents loads none of them.
NOT_AT_START = [
    "prometheus_client",
    "watchfiles",
    "supervisor.manifest.schema",
    "httpx",
    "supervisor.cluster",
    "supervisor.runners.inprocess",
    "tomli_w",
    "difflib",
    "shlex",
    "datetime",
]


def test_run_loads_nothing_it_does_not_use_at_start(tmp_path: Path) -> None:
    manifest = tmp_path / "agents.toml"
    manifest.write_text(
        '[supervisor]\napi = ""\n[defaults]\nrestart = "always"\n'
        '[agents.a]\ncommand = ["sleep", "1"]\n[agents.b]\ncommand = ["true"]\n'
    )
    code = (
        "import sys, pathlib, supervisor.cli, supervisor.run, supervisor.api.serve\n"
        f"supervisor.run.mf.load(pathlib.Path({str(manifest)!r}))\n"
        f"print(sorted(m for m in {NOT_AT_START!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# Imported by the API task once the first agents are spawned (`supervisor.api.serve`):
# the agents' start does not wait for the HTTP stack.
AFTER_THE_FIRST_SPAWNS = ["hypercorn", "starlette", "h11", "anyio", "supervisor.api.app"]


def test_run_spawns_before_it_imports_the_http_stack() -> None:
    code = (
        "import sys, supervisor.cli, supervisor.run\n"
        f"print(sorted(m for m in {AFTER_THE_FIRST_SPAWNS!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_openapi_media_type_of_metrics_is_prometheus_clients() -> None:
    from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

    from supervisor.api.openapi import METRICS_MEDIA_TYPE

    assert CONTENT_TYPE_PLAIN_0_0_4.split(";")[0] == METRICS_MEDIA_TYPE
