"""How long `supervisor.manifest.load` takes for a 10,000-agent manifest, end to end.

Generates a ~600 KB manifest (a mix of in-process and process agents with a few keys
each, some `after`, a [defaults] table) in a temporary folder, then times `load()`:
reading, parsing, structuring, merging, checking. Prints the median of 5 runs, next to
rtoml's own parse of the same text, timed in the same runs: the machine may be shared
and noisy, so compare the ratio (issue 2: reload time dominated by reading the file).

    .venv/bin/python benchmarks/manifest_load.py [AGENTS]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import rtoml

from supervisor.manifest import load

RUNS = 5


def agent_table(n: int) -> str:
    """One agent: every third a process, a few keys each, some depending on an earlier one."""
    lines = [f"[agents.w{n:05d}]"]
    if n % 3 == 0:
        lines.append(f'command = ["python3", "worker.py", "{n}"]')
        lines.append(f'env = {{ N = "{n}" }}')
    else:
        lines.append('entry = "poll:main"')
        lines.append(f"params = {{ n = {n} }}")
    if n % 10 == 5:
        lines.append(f'after = ["w{n - 5:05d}"]')
    elif n % 10 == 7:
        lines.append('restart = "always"')
    return "\n".join(lines) + "\n"


def manifest_text(agents: int) -> str:
    head = (
        '[supervisor]\napi = ""\n\n[defaults]\nstart_timeout = 10.0\nparams = { region = "eu" }\n\n'
    )
    return head + "\n".join(agent_table(n) for n in range(agents))


def main() -> None:
    agents = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "agents.toml"
        path.write_text(manifest_text(agents))
        times, parse_times = [], []
        for _ in range(RUNS):
            start = time.perf_counter()
            rtoml.loads(path.read_text())
            parse_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            manifest = load(path)
            times.append(time.perf_counter() - start)
        assert len(manifest.agents) == agents
        size = path.stat().st_size
    median, parse = statistics.median(times), statistics.median(parse_times)
    ratio = statistics.median(t / p for t, p in zip(times, parse_times, strict=True))
    print(
        f"load(): {agents} agents, {size / 1000:.0f} KB: median {median * 1000:.0f} ms of {RUNS}"
        f" (min {min(times) * 1000:.0f} ms, {median / agents * 1e6:.1f} µs per agent);"
        f" rtoml's parse alone {parse * 1000:.0f} ms: load is {ratio:.1f}x the parse"
    )


if __name__ == "__main__":
    main()
