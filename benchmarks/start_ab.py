"""Start of N process agents, two (or more) git revisions of ours side by side.

The machine this runs on may be shared and noisy, so a start time means little alone:
this launches each revision the way the full benchmark does (`peers.Ours`: byte-compiled,
no editable-install hook) and measures the same start (launch -> all N `sleep` children
exec'd, read from /proc: `scenarios.measure_start`), the revisions alternating round by
round, and prints the medians and their ratio. Also printed: launch -> first agent
running, and the supervisor's own CPU time by then (/proc/PID/schedstat), which load
on the machine disturbs less than wall time.

    .venv/bin/python benchmarks/start_ab.py main,HEAD [--n 500] [--rounds 5]

A revision is anything `git rev-parse` takes; ``wt`` is the work tree as it is.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import ab
import peers
import procfs
import scenarios


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("revs", help="comma-separated revisions (wt: the work tree)")
    p.add_argument("--n", type=int, default=500, help="process agents (default 500)")
    p.add_argument("--rounds", type=int, default=5, help="rounds per revision (default 5)")
    p.add_argument("--python", default=str(peers.REPO / ".venv" / "bin" / "python"))
    a = p.parse_args()
    revs = a.revs.split(",")
    cfg = scenarios.Config()
    try:
        ours = ab.revisions(revs, a.python, None, "ours-ab")
    except peers.Unavailable as e:
        print(e, file=sys.stderr)
        return 2
    agents = scenarios.agent_set(a.n)
    start: dict[str, list[float]] = {rev: [] for rev in revs}
    first: dict[str, list[float]] = {rev: [] for rev in revs}
    cpu: dict[str, list[float]] = {rev: [] for rev in revs}
    for _, rev in ab.alternating(revs, a.rounds):
        peer = ours[rev]
        peer.prepare(str(a.n), agents)
        try:
            t, watch = scenarios.measure_start(peer, a.n, cfg)
            cpu[rev].append(procfs.cpu_seconds(peer.roots()[0]))
            start[rev].append(t)
            if watch.first is not None:
                first[rev].append(watch.first)
            time.sleep(0.3)
            scenarios.measure_shutdown(peer, watch, cfg.shutdown_timeout)
        finally:
            peer.kill()
        time.sleep(0.3)
    base = statistics.median(start[revs[0]])
    for rev in revs:
        med = statistics.median(start[rev])
        print(
            f"{rev:>12}: start {med:.3f} s (min {min(start[rev]):.3f}, x{med / base:.3f}), "
            f"first running {statistics.median(first[rev] or [0]):.3f} s, "
            f"supervisor CPU by then {statistics.median(cpu[rev]):.3f} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
