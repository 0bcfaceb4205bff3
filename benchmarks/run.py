"""Benchmarks of `supervisor` side by side with supervisord and pm2 (issue 6).

Usage: ``just bench`` (full, several minutes) or ``just bench --quick`` (smoke run, < 1 min);
``just bench --health`` compares the cost of health checks before and after (health.py).
See docs/performance.md for what each figure means. Only the standard library is used here;
supervisord is installed into benchmarks/.venv-supervisord, pm2 into benchmarks/.work/pm2.

Peers are measured in rounds, alternating (the order rotates each round), and every figure is
the median over rounds; ratios are the median of the per-round ratios, so the noise of this
shared machine hits both sides of a ratio alike.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import observe
import peers
import procfs
import scenarios

Samples = dict[str, dict[str, list[float]]]  # metric key -> peer -> one value per round


@dataclass(frozen=True)
class Row:
    key: str  # metric key; "{}" is replaced by N for per-N metrics
    label: str
    unit: str  # "s", "ms", "MiB", "KiB", "count", "ms/10s", "/10s"
    target: str = ""


ROWS = [
    Row("floor@{}", "floor: fork+exec+wait `sleep 0` x{}", "s"),
    Row("floor_spawn@{}", "  spawn `sleep` x{}, no wait", "s"),
    Row("start@{}", "start {} agents", "s", "500: >=5x supervisord, <=2x floor"),
    Row("start_first@{}", "  launch -> first agent running", "s"),
    Row("crash_p50@{}", "crash -> running p50, N={}", "ms", "< 3 ms"),
    Row("crash_max@{}", "crash -> running max, N={}", "ms"),
    Row("shutdown@{}", "shutdown {} agents", "s", "500: < 0.3 s"),
    Row("rss_mib@{}", "RSS of supervisor, N={}", "MiB", "< supervisord"),
    Row("rss_helpers_mib@{}", "  of which helper processes", "MiB"),
    Row("pss_mib@{}", "  PSS (shared pages split)", "MiB"),
    Row("idle_cpu_ms@{}", "idle CPU, N={}", "ms/10s", "0"),
    Row("idle_wakeups@{}", "idle wake-ups (vol. ctx switches)", "/10s", "0"),
    Row("cli_status@{}", "CLI `status` (all agents), N={}", "ms", "500: < 100 ms"),
    Row("cli_start@{}", "CLI `start ID`", "ms", "500: < 100 ms"),
    Row("cli_stop@{}", "CLI `stop ID`", "ms", "500: < 100 ms"),
    Row("cli_logs@{}", "CLI `logs ID` (supervisorctl: `tail`)", "ms", "500: < 100 ms"),
    Row("python_floor@{}", "  floor: `python -c pass`", "ms"),
    Row("reload@{}", "reload 10% of {} -> converged", "s", "500: < 0.5 s"),
    Row("reload_answer@{}", "  reload command returned", "s"),
    Row("reload_unchanged_restarted@{}", "  unchanged agents restarted", "count", "0"),
    Row("inproc_ready", "in-process: launch -> {} ready", "s", "< 1 s"),
    Row("inproc_ready_net", "  minus empty-manifest launch", "s", "< 1 s"),
    Row("inproc_api_up", "  launch -> /healthz answers", "s"),
    Row("inproc_rss_mib", "  RSS with {} agents", "MiB"),
    Row("inproc_slot_kib", "  memory per slot", "KiB", "< 10 KiB"),
    Row("inproc_reload", "  reload 10% -> converged", "s", "< 0.3 s"),
    Row("inproc_unchanged_restarted", "  unchanged agents touched", "count", "0"),
    Row("inproc_shutdown", "  shutdown", "s", "< 1 s"),
    Row("empty_ready", "ours, empty manifest: launch -> ready", "s"),
    Row("empty_rss_mib", "ours, empty manifest: RSS", "MiB"),
    *(Row(*row) for row in observe.ROWS),  # watching and a flood of output (observe.py)
]

SCALE = {"s": 1.0, "ms": 1e3, "MiB": 1.0, "KiB": 1.0, "count": 1.0, "ms/10s": 1.0, "/10s": 1.0}
SCALE |= {"%": 1.0, "/s": 1.0}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: small N, one round")
    p.add_argument("--rounds", type=int, help="rounds per measurement (default 3; quick 1)")
    p.add_argument("--n", help="comma-separated numbers of process agents (default 100,500)")
    p.add_argument("--inproc", type=int, help="in-process agents (default 10000; quick 2000)")
    p.add_argument(
        "--peers",
        default="ours,supervisord,pm2,minimal",
        help="which supervisors to run (minimal: benchmarks/respawn.py, a floor)",
    )
    p.add_argument("--crashes", type=int, help="crashes per session (default 25; quick 6)")
    p.add_argument("--idle-seconds", type=float, help="idle CPU window (default 10; quick 1.5)")
    p.add_argument("--cli-reps", type=int, help="runs of each CLI command (default 20; quick 5)")
    p.add_argument(
        "--python",
        default=str(peers.REPO / ".venv" / "bin" / "python"),
        help="python that runs ours (default: the project's .venv)",
    )
    p.add_argument(
        "--ours-backoff",
        default="0",
        help="backoff.initial for ours ('none' = product default); supervisord restarts at once",
    )
    p.add_argument(
        "--ours-rev",
        default="",
        help="run ours from this git revision (e.g. HEAD) instead of the work tree",
    )
    p.add_argument(
        "--pm2-rounds",
        type=int,
        default=1,
        help="rounds that include pm2 (default 1: its shutdown of 500 takes about a minute)",
    )
    p.add_argument("--out", default=str(peers.BENCH / "results.json"))
    p.add_argument(
        "--render",
        metavar="RESULTS_JSON",
        help="only print the table and targets of an earlier run (no measuring)",
    )
    a = p.parse_args(argv)
    quick = a.quick
    a.rounds = a.rounds or (1 if quick else 3)
    a.ns = [int(x) for x in (a.n or ("50" if quick else "100,500")).split(",")]
    a.inproc = a.inproc if a.inproc is not None else (2000 if quick else 10000)
    a.crashes = a.crashes or (6 if quick else 25)
    a.idle_seconds = a.idle_seconds or (1.5 if quick else 10.0)
    a.cli_reps = a.cli_reps if a.cli_reps is not None else (5 if quick else 20)
    a.peer_names = [x.strip() for x in a.peers.split(",") if x.strip()]
    return a


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def probe_ours(ours: peers.Ours, timeout: float = 20.0) -> None:
    """Run ours on a one-agent manifest; raise `peers.Unavailable` if it does not work."""
    ours.prepare("probe", {"probe": "99999"})
    try:
        scenarios.measure_start(ours, 1, scenarios.Config(start_timeout=timeout))
    except Exception as e:
        last = (str(e).strip().splitlines() or ["?"])[-1]
        raise peers.Unavailable(f"`supervisor run` did not start an agent: {last}")
    finally:
        ours.kill()


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kib / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    try:
        node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    except OSError:
        node = ""
    try:
        commit = subprocess.run(
            ["git", "-C", str(peers.REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "node": node,
        "commit": commit,
    }


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.samples: Samples = defaultdict(lambda: defaultdict(list))
        self.ratios: dict[str, list[float]] = defaultdict(list)
        self.errors: dict[str, list[str]] = defaultdict(list)
        self.notes: list[str] = []
        self.versions: dict[str, str] = {}
        self.info: dict[str, Any] = defaultdict(list)
        self.peers: list[peers.Peer] = []
        self.cfg = scenarios.Config(
            crashes=args.crashes,
            idle_seconds=args.idle_seconds,
            idle_n=max(args.ns),
            settle=0.5 if args.quick else 1.0,
            cli_reps=args.cli_reps,
        )

    # -- setup ---------------------------------------------------------------------------
    def setup(self) -> None:
        backoff = None if self.args.ours_backoff == "none" else float(self.args.ours_backoff)
        candidates: dict[str, Callable[[], peers.Peer]] = {
            "ours": lambda: peers.Ours(self.args.python, backoff, self.args.ours_rev),
            "supervisord": peers.Supervisord,
            "pm2": peers.Pm2,
            "minimal": peers.Minimal,
        }
        peers.WORK.mkdir(parents=True, exist_ok=True)
        for name in self.args.peer_names:
            if name not in candidates:
                raise SystemExit(f"unknown peer {name!r}; choose from {', '.join(candidates)}")
            peer = candidates[name]()
            try:
                log(f"setting up {name} ...")
                peer.setup()
                if isinstance(peer, peers.Ours):
                    probe_ours(peer)
                    if not peer.has_logs_command():
                        self.notes.append(
                            "ours: no `supervisor logs` in this revision: not measured"
                        )
                    rev = self.args.ours_rev
                    exported = peer.src.name.removeprefix("src-")
                    self.versions[name] = (
                        f"{rev} = {exported}" if rev else f"work tree at {machine()['commit']}"
                    )
                elif isinstance(peer, peers.Supervisord | peers.Pm2):
                    self.versions[name] = peer.version()
            except peers.Unavailable as e:
                msg = f"{name}: not available: {e}"
                log(msg)
                self.notes.append(msg)
                continue
            self.peers.append(peer)

    # -- recording -------------------------------------------------------------------------
    def record(self, key: str, peer: str, value: float) -> None:
        self.samples[key][peer].append(value)

    def record_session(self, peer: peers.Peer, n: int, s: scenarios.Session) -> None:
        for name, value in s.values.items():
            self.record(f"{name}@{n}", peer.name, value)
        for err in s.errors:
            self.errors[peer.name].append(f"N={n}: {err}")
            log(f"  {peer.name} N={n}: {err}")
        if s.info:
            self.info[f"{peer.name}@{n}"].append(s.info)

    # -- the run ---------------------------------------------------------------------------
    def run(self) -> None:
        a = self.args
        for r in range(a.rounds):
            log(f"round {r + 1}/{a.rounds}")
            these = [p for p in self.peers if p.name != "pm2" or r < a.pm2_rounds]
            k = r % max(1, len(these))
            order = these[k:] + these[:k]
            for n in a.ns:
                # a floor is a best case and noise only adds to it: the best of 3
                floor = min(scenarios.floor_spawn_wait(n) for _ in range(3))
                self.record(f"floor@{n}", "floor", floor)
                spawn = min(scenarios.floor_spawn_sleep(n) for _ in range(3))
                self.record(f"floor_spawn@{n}", "floor", spawn)
                round_values: dict[str, dict[str, float]] = {"floor": {"start": floor}}
                if n == self.cfg.idle_n and self.args.cli_reps:
                    ours = next((p for p in self.peers if isinstance(p, peers.Ours)), None)
                    python = self.args.python if ours is None else ours.python
                    py = scenarios.python_floor(python, self.args.cli_reps)
                    self.record(f"python_floor@{n}", "floor", py)
                for peer in order:
                    log(f"  {peer.name} N={n} ...")
                    t = time.perf_counter()
                    s = scenarios.process_session(
                        peer,
                        n,
                        self.cfg,
                        idle=n == self.cfg.idle_n,
                        crashes=min(a.crashes, n - 1),
                        reload=peer.can_reload,
                        cli=n == self.cfg.idle_n,
                    )
                    self.record_session(peer, n, s)
                    round_values[peer.name] = s.values
                    log(
                        f"  {peer.name} N={n}: {_brief(s.values)} ({time.perf_counter() - t:.1f} s)"
                    )
                self.add_ratios(n, round_values)
            ours = next((p for p in self.peers if isinstance(p, peers.Ours)), None)
            if ours is not None and a.inproc:
                self.inprocess_round(ours)
            if ours is not None:
                observe.measure(self, ours, r)

    def add_ratios(self, n: int, values: dict[str, dict[str, float]]) -> None:
        mine, theirs = values.get("ours", {}), values.get("supervisord", {})
        for name, v in mine.items():
            if name in theirs and v > 0:
                self.ratios[f"{name}@{n}"].append(theirs[name] / v)
        floor = values["floor"]["start"]
        if "start" in mine and floor > 0:
            self.ratios[f"start_over_floor@{n}"].append(mine["start"] / floor)

    def inprocess_round(self, ours: peers.Ours) -> None:
        count = self.args.inproc
        log(f"  ours in-process x{count} ...")
        empty = scenarios.inprocess_session(ours, 0, self.cfg)
        full = scenarios.inprocess_session(ours, count, self.cfg)
        for s in (empty, full):
            for err in s.errors:
                self.errors["ours"].append(f"in-process: {err}")
                log(f"  ours in-process: {err}")
        if "inproc_ready" in empty.values:
            self.record("empty_ready", "ours", empty.values["inproc_ready"])
            self.record("empty_rss_mib", "ours", empty.values["inproc_rss_mib"])
        for k, v in full.values.items():
            self.record(k, "ours", v)
        if "inproc_ready" in empty.values and "inproc_ready" in full.values:
            net = full.values["inproc_ready"] - empty.values["inproc_ready"]
            self.record("inproc_ready_net", "ours", net)
            kib = (full.values["inproc_rss_mib"] - empty.values["inproc_rss_mib"]) * 1024
            self.record("inproc_slot_kib", "ours", kib / count)
        if full.info:
            self.info["ours@inproc"].append(full.info)
        log(f"  ours in-process: {_brief(full.values)}")

    # -- results ---------------------------------------------------------------------------
    def medians(self) -> dict[str, dict[str, float]]:
        return {
            key: {peer: statistics.median(vs) for peer, vs in by_peer.items() if vs}
            for key, by_peer in self.samples.items()
        }

    def targets(self, med: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
        """Issue 6's targets, judged on the medians (ratios: median of per-round ratios)."""
        out: list[dict[str, Any]] = []
        big = max(self.args.ns)
        ours = lambda key: med.get(key, {}).get("ours")  # noqa: E731
        peer = lambda key, name: med.get(key, {}).get(name)  # noqa: E731

        def add(target: str, value: Any, met: bool | None) -> None:
            out.append({"target": target, "measured": value, "met": met})

        ratio = self.ratio(f"start@{big}")
        add(f"start of {big}: >= 5x faster than supervisord", _fmt(ratio, "x"), _ge(ratio, 5))
        rel = self.ratio(f"start_over_floor@{big}")
        add(f"start of {big}: within 2x of the serial spawn floor", _fmt(rel, "x"), _le(rel, 2))
        o = ours(f"crash_p50@{big}")
        add("crash -> running p50 < 3 ms", _fmt(o and o * 1e3, "ms"), _lt(o, 0.003))
        o = ours(f"shutdown@{big}")
        add(f"shutdown of {big} < 0.3 s", _fmt(o, "s"), _lt(o, 0.3))
        o, sd = ours(f"rss_mib@{big}"), peer(f"rss_mib@{big}", "supervisord")
        add(
            f"RSS at {big} below supervisord's",
            f"{_fmt(o, 'MiB')} vs {_fmt(sd, 'MiB')}",
            _lt(o, sd) if sd is not None else None,
        )
        cpu, wake = ours(f"idle_cpu_ms@{big}"), ours(f"idle_wakeups@{big}")
        add(
            "idle CPU 0 (no periodic wake-ups)",
            f"{_fmt(cpu, 'ms')} CPU, {_fmt(wake, '')} wake-ups per 10 s",
            None if cpu is None or wake is None else (wake <= 1 and cpu < 1.0),
        )
        n = self.args.inproc
        o = ours("inproc_ready")
        add(f"{n} in-process agents running < 1 s (from launch)", _fmt(o, "s"), _lt(o, 1.0))
        o = ours("inproc_ready_net")
        add("  the same net of an empty launch", _fmt(o, "s"), _lt(o, 1.0))
        o = ours("inproc_slot_kib")
        add("< 10 KiB per in-process slot", _fmt(o, "KiB"), _lt(o, 10.0))
        o = ours("inproc_reload")
        add(f"10% reload of {n} in-process converged < 300 ms", _fmt(o, "s"), _lt(o, 0.3))
        o = ours(f"reload@{big}")
        add(f"10% reload of {big} processes converged < 0.5 s", _fmt(o, "s"), _lt(o, 0.5))
        o = ours(f"reload_unchanged_restarted@{big}")
        add("unchanged agents restarted by a reload: 0", _fmt(o, ""), None if o is None else o == 0)
        o = ours("inproc_shutdown")
        add(f"shutdown of {n} in-process agents < 1 s", _fmt(o, "s"), _lt(o, 1.0))
        for action in ("status", "start", "stop", "logs"):
            o = ours(f"cli_{action}@{big}")
            sd = peer(f"cli_{action}@{big}", "supervisord")
            vs = f" (supervisorctl {_fmt(sd and sd * 1e3, 'ms')})" if sd is not None else ""
            measured = _fmt(o and o * 1e3, "ms") + vs if o is not None else "not measured"
            add(f"CLI `supervisor {action}` < 100 ms at {big}", measured, _lt(o, 0.1))
        for target, measured, met in observe.targets(med):
            add(target, measured, met)
        return out

    def headline(self, med: dict[str, dict[str, float]]) -> list[str]:
        """The ratios first: ours against supervisord and against the floors, per round."""
        big = max(self.args.ns)
        out: list[str] = []

        def line(label: str, value: float | None, target: str) -> None:
            if value is not None:
                out.append(f"{label:<46} {value:8.2f}x   {target}")

        line(f"start of {big}: supervisord / ours", self.ratio(f"start@{big}"), "target >= 5x")
        line(
            f"start of {big}: ours / serial spawn floor",
            self.ratio(f"start_over_floor@{big}"),
            "target <= 2x",
        )
        line(f"shutdown of {big}: supervisord / ours", self.ratio(f"shutdown@{big}"), "")
        line(f"RSS at {big}: supervisord / ours", self.ratio(f"rss_mib@{big}"), "target > 1x")
        line(f"PSS at {big}: supervisord / ours", self.ratio(f"pss_mib@{big}"), "")
        line(
            f"crash -> running p50 at {big}: supervisord / ours", self.ratio(f"crash_p50@{big}"), ""
        )
        line(f"reload 10% of {big}: supervisord / ours", self.ratio(f"reload@{big}"), "")
        for action in ("status", "start", "stop", "logs"):
            line(f"CLI {action}: supervisorctl / ours", self.ratio(f"cli_{action}@{big}"), "")
        return out

    def ratio(self, key: str) -> float | None:
        vs = self.ratios.get(key)
        return statistics.median(vs) if vs else None

    def table(self, med: dict[str, dict[str, float]]) -> list[list[str]]:
        """Per-N rows grouped by N (N=100 block, then N=500), then the in-process rows."""
        names = ["ours", "supervisord", "pm2", "minimal"]
        rows = [["metric", *names[:3], "minimal / floor", "sd/ours", "target"]]
        per_n = [r for r in ROWS if "{}" in r.key]
        plain = [r for r in ROWS if "{}" not in r.key]
        plan = [(r, n) for n in self.args.ns for r in per_n] + [(r, None) for r in plain]
        for row, n in plan:
            key = row.key.format(n)
            by_peer = dict(med.get(key) or {})
            if not by_peer:
                continue
            label = row.label.format(n if n is not None else self.args.inproc)
            by_peer.setdefault("minimal", by_peer.get("floor", math.nan))  # floor rows
            cells = [_cell(by_peer.get(p), row.unit) for p in names]
            target = row.target
            if target.startswith("500:") and n != 500:
                target = ""
            r = self.ratio(key)
            rows.append([label, *cells, f"{r:.1f}x" if r else "", target])
        return rows

    def results(self) -> dict[str, Any]:
        med = self.medians()
        return {
            "command": "just bench " + " ".join(sys.argv[1:]),
            "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "machine": machine(),
            "versions": self.versions,
            "config": {
                "rounds": self.args.rounds,
                "n": self.args.ns,
                "inproc": self.args.inproc,
                "crashes": self.args.crashes,
                "idle_seconds": self.args.idle_seconds,
                "ours_backoff_initial": self.args.ours_backoff,
                **{k: v for k, v in asdict(self.cfg).items() if k not in ("crashes",)},
            },
            "medians": med,
            "ratios": {k: statistics.median(v) for k, v in self.ratios.items()},
            "ratios_per_round": dict(self.ratios),
            "ratios_meaning": "METRIC@N: supervisord / ours; start_over_floor@N: ours / floor",
            "samples": {k: dict(v) for k, v in self.samples.items()},
            "targets": self.targets(med),
            "headline": self.headline(med),
            "table": self.table(med),
            "notes": self.notes,
            "errors": dict(self.errors),
            "info": dict(self.info),
        }


def _fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "n/a"
    return f"{v:.3g} {unit}".strip()


def _lt(v: float | None, limit: float | None) -> bool | None:
    return None if v is None or limit is None else v < limit


def _le(v: float | None, limit: float) -> bool | None:
    return None if v is None else v <= limit


def _ge(v: float | None, limit: float) -> bool | None:
    return None if v is None else v >= limit


def _cell(v: float | None, unit: str) -> str:
    if v is None or math.isnan(v):
        return ""
    v = v * SCALE[unit]
    if unit == "count":
        return f"{v:g}"
    if unit in ("s", "ms"):
        return f"{v:.4f} {unit}" if v < 0.1 else f"{v:.3f} {unit}"
    return f"{v:.1f} {unit}"


def _brief(values: dict[str, float]) -> str:
    keys = ["start", "crash_p50", "rss_mib", "idle_cpu_ms", "reload", "shutdown", "inproc_ready"]
    return ", ".join(f"{k}={values[k]:.4g}" for k in keys if k in values) or "no figures"


def render(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for j, r in enumerate(rows):
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
        if j == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def report(res: dict[str, Any]) -> None:
    for line in res.get("headline", []):
        print(line)
    print()
    print(render(res["table"]))
    print()
    for t in res["targets"]:
        mark = {True: "met", False: "MISSED", None: "n/a"}[t["met"]]
        print(f"  [{mark:>6}] {t['target']}: {t['measured']}")
    for note in res["notes"]:
        print(f"  note: {note}")
    for peer, errs in res["errors"].items():
        for err in errs:
            print(f"  error: {peer}: {err}")


def rerender(args: argparse.Namespace) -> int:
    """Rebuild table and targets from the samples of an earlier results file."""
    res = json.loads(Path(args.render).read_text())
    cfg = res["config"]
    args.ns, args.inproc = cfg["n"], cfg["inproc"]
    bench = Bench(args)
    for key, by_peer in res["samples"].items():
        for peer, values in by_peer.items():
            bench.samples[key][peer] = values
    for key, values in res.get("ratios_per_round", {}).items():
        bench.ratios[key] = values
    med = bench.medians()
    res["table"], res["targets"] = bench.table(med), bench.targets(med)
    res["headline"] = bench.headline(med)
    print(f"{res['command']}  ({res['when']}, commit {res['machine'].get('commit', '?')})\n")
    report(res)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--health" in argv:  # what health costs, before and after (benchmarks/health.py)
        import health

        return health.main([arg for arg in argv if arg != "--health"])
    args = parse_args(argv)
    if args.render:
        return rerender(args)

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    signal.signal(signal.SIGINT, on_term)  # even when started with SIGINT ignored (`cmd &`)
    if not procfs.become_subreaper():
        log("warning: could not become a child subreaper; daemonised peers may leak")
    bench = Bench(args)
    started = time.perf_counter()
    code = 0
    try:
        bench.setup()
        bench.run()
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        code = 130
    finally:
        for peer in bench.peers:
            peer.kill()
        leftovers = procfs.kill_descendants()
        if leftovers:
            log(f"cleanup: killed {len(leftovers)} leftover processes: {leftovers}")
    if code:
        return code
    res = bench.results()
    res["duration_s"] = round(time.perf_counter() - started, 1)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    report(res)
    print(f"\nwrote {args.out} in {res['duration_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
