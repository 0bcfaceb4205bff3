"""Crash -> running of ours at two (or more) git revisions, side by side.

The figure is the noisiest of the benchmark on a shared machine (docs/performance.md), so
one run of it means little alone: this launches each revision the way the full benchmark
does (`peers.Ours`), crashes the same agents the same way (`scenarios.measure_crashes`),
the revisions alternating round by round, and prints the medians and their ratio, with
the supervisor's own CPU time per crash (its main thread's, from /proc/PID/schedstat: it
counts the SIGCHLD pass and the cgroup move too). ``minimal`` stands for the minimal
respawner (benchmarks/respawn.py).

    .venv/bin/python benchmarks/crash_ab.py main,HEAD [--n 500] [--rounds 4] [--crashes 25]
    .venv/bin/python benchmarks/crash_ab.py HEAD,minimal --idle 10   # as `just bench` does

A revision is anything `git rev-parse` takes; ``wt`` is the work tree as it is.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import ab
import procfs
import scenarios


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("revs", help="comma-separated revisions (or wt, minimal)")
    p.add_argument("--n", type=int, default=500, help="agents (default 500)")
    p.add_argument("--rounds", type=int, default=4, help="launches per revision (default 4)")
    p.add_argument("--crashes", type=int, default=25, help="crashes per launch (default 25)")
    p.add_argument(
        "--idle", type=float, default=1.0, help="seconds between the start and the crashes"
    )
    a = p.parse_args()
    revs = a.revs.split(",")
    cfg = scenarios.Config()
    python = str(Path(__file__).parents[1] / ".venv" / "bin" / "python")
    launched = ab.revisions(revs, python, 0.0, "crash-ab")
    samples: dict[str, list[float]] = {rev: [] for rev in revs}
    cpu: dict[str, list[float]] = {rev: [] for rev in revs}
    agents = scenarios.agent_set(a.n)
    for i, rev in ab.alternating(revs, a.rounds):
        peer = launched[rev]
        peer.prepare(str(a.n), agents)
        try:
            _, watch = scenarios.measure_start(peer, a.n, cfg)
            time.sleep(a.idle)
            sup = peer.roots()[0]
            before = procfs.cpu_seconds(sup)
            got = scenarios.measure_crashes(watch, a.n, a.crashes)
            cpu[rev].append((procfs.cpu_seconds(sup) - before) / len(got) * 1e3)
            samples[rev].extend(got)
            print(
                f"{rev} round {i}: p50 {statistics.median(got) * 1e3:.2f} ms, "
                f"CPU per crash {cpu[rev][-1]:.3f} ms",
                flush=True,
            )
            scenarios.measure_shutdown(peer, watch, cfg.shutdown_timeout)
        finally:
            peer.kill()
        time.sleep(0.3)
    base = statistics.median(samples[revs[0]])
    for rev in revs:
        got = sorted(samples[rev])
        m = statistics.median(got)
        print(
            f"{rev:>12}: p50 {m * 1e3:.3f} ms  x{m / base:.3f}  "
            f"p10 {got[len(got) // 10] * 1e3:.2f}  p90 {got[len(got) * 9 // 10] * 1e3:.2f} ms  "
            f"CPU per crash {statistics.median(cpu[rev]):.3f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
