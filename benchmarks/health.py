"""What health costs (issue 15): the 10,000-agent figures before and after, and heartbeats.

Usage: ``just bench --health`` (or ``python benchmarks/health.py``), with ``--inproc N``,
``--rounds R``, ``--before REV`` (default: the commit before health landed) and
``--idle-seconds S``.

Two builds of ours run alternately in each round, "before" (a `git archive` of REV) and
"after" (the work tree), on the same machine minutes apart:

- ``idle``: N idle in-process agents: launch -> /readyz 200, idle CPU and wake-ups over S
  seconds, a 10 % reload -> answered, shutdown. In "after" the loop-lag instrument is
  installed (it is on by default with in-process agents), so this is its overhead.
- ``heartbeat``: N agents that wake once a second; "after" gives them ``watchdog = 5``
  and they call ``ctx.heartbeat()`` each time, "before" has neither. The CPU the loop
  spends on top of the agents' own wake-ups is what heartbeats and watchdog timers cost.

Ratios are after / before per round, then the median over rounds: 1.00 is "no change".
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peers
import procfs
import scenarios

BEFORE = "81ea350"  # main just before health (issue 15) landed
BASIC = ["ready", "reload", "shutdown", "idle_cpu_ms", "idle_wakeups"]


def write_manifest(ours: peers.Ours, count: int, module: str, extra: str, gen: int = 0) -> None:
    parts = [ours.header()]
    for i in range(count):
        g = gen if i % 10 == 0 else 0
        parts.append(f'[agents.a{i}]\nentry = "{module}:main"\nparams = {{ gen = {g} }}\n{extra}')
    ours.manifest = ours.dir / "agents.toml"
    ours.manifest.write_text("".join(parts))


def session(
    ours: peers.Ours, label: str, count: int, module: str, extra: str, idle: float
) -> dict[str, float]:
    """One launch: ready, idle CPU, a 10 % reload, shutdown (seconds; CPU in ms/10 s)."""
    ours.prepare(label, {})
    shutil.copy(peers.BENCH / "agents" / f"{module}.py", ours.dir / f"{module}.py")
    write_manifest(ours, count, module, extra)
    out: dict[str, float] = {}
    try:
        t0 = time.perf_counter()
        ours.launch()
        scenarios._wait_http(ours.port, "/readyz", 300, ours.failed)
        out["ready"] = time.perf_counter() - t0
        time.sleep(1.0)
        usage = scenarios.measure_idle(ours, idle)
        out["idle_cpu_ms"], out["idle_wakeups"] = usage["idle_cpu_ms"], usage["idle_wakeups"]
        out["cpu_percent"] = usage["idle_cpu_ms"] / 10e3 * 100  # of one core
        out["rss_mib"] = usage["rss_mib"]
        write_manifest(ours, count, module, extra, gen=1)
        t1 = time.perf_counter()
        status, body = peers.request(ours.port, "POST", "/reload", timeout=300)
        if status != 200:
            raise RuntimeError(f"POST /reload answered {status}: {str(body)[:200]}")
        out["reload"] = time.perf_counter() - t1
        roots = ours.roots()
        t2 = time.perf_counter()
        ours.terminate()
        peers.wait_until(ours.exited, timeout=120, interval=0.0005)
        out["shutdown"] = time.perf_counter() - t2
        procfs.reap(roots)
    finally:
        ours.kill()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--inproc", type=int, default=10000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--before", default=BEFORE, help=f"the revision to compare to ({BEFORE})")
    p.add_argument("--idle-seconds", type=float, default=5.0)
    p.add_argument("--python", default=str(peers.REPO / ".venv" / "bin" / "python"))
    p.add_argument("--out", default=str(peers.BENCH / "results-health.json"))
    a = p.parse_args(argv)
    peers.WORK.mkdir(parents=True, exist_ok=True)
    builds = {"before": peers.Ours(a.python, None, a.before), "after": peers.Ours(a.python, None)}
    for build in builds.values():
        build.setup()
    cases = {  # case -> build -> (module, extra manifest keys per agent)
        "idle": {"before": ("bench_idle_agent", ""), "after": ("bench_idle_agent", "")},
        "heartbeat": {"before": ("heartbeat", ""), "after": ("heartbeat", "watchdog = 5\n")},
    }
    shutil.copy(peers.BENCH / "agents" / "idle.py", peers.BENCH / "agents" / "bench_idle_agent.py")
    samples: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    try:
        for r in range(a.rounds):
            order = ["before", "after"] if r % 2 == 0 else ["after", "before"]
            for case, by_build in cases.items():
                for name in order:
                    module, extra = by_build[name]
                    print(f"round {r + 1}: {case} {name} ...", file=sys.stderr, flush=True)
                    values = session(
                        builds[name],
                        f"health-{case}-{name}",
                        a.inproc,
                        module,
                        extra,
                        a.idle_seconds,
                    )
                    for key, value in values.items():
                        samples[f"{case}.{key}"][name].append(value)
    finally:
        (peers.BENCH / "agents" / "bench_idle_agent.py").unlink(missing_ok=True)
        for build in builds.values():
            build.kill()
    result = report(samples, a)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {a.out}")
    return 0


def report(samples: dict[str, dict[str, list[float]]], a: argparse.Namespace) -> dict[str, Any]:
    rows = []
    print(f"\n{a.inproc} in-process agents, {a.rounds} rounds, before = {a.before}")
    print(f"{'figure':34} {'before':>10} {'after':>10} {'after/before':>13}")
    for key, by_build in samples.items():
        before, after = by_build.get("before", []), by_build.get("after", [])
        if not before or not after:
            continue
        ratios = [x / y for x, y in zip(after, before, strict=False) if y > 0]
        ratio = statistics.median(ratios) if ratios else float("nan")
        b, f = statistics.median(before), statistics.median(after)
        print(f"{key:34} {b:10.3f} {f:10.3f} {ratio:13.3f}")
        if key.endswith("cpu_percent"):  # of one core: the difference is what it costs
            print(f"{'  after - before (% of a core)':34} {'':10} {f - b:10.2f}")
        rows.append({"figure": key, "before": b, "after": f, "ratio": ratio, "samples": by_build})
    return {
        "command": "just bench --health " + " ".join(sys.argv[1:]),
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "rows": rows,
    }


if __name__ == "__main__":
    sys.exit(main())
