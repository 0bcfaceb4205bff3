"""Scale-out figures: members of one cluster sharing a manifest of a few hundred agents.

    .venv/bin/python benchmarks/cluster.py [--agents 300] [--ttl 2] [--members 3] [--keep]

Starts a real etcd (Debian's etcd-server) on free ports and `supervisor run` members on
one manifest of process agents that record their starts ("PID PPID" in ID.starts). A
sampler thread reads, as often as it can, which processes of each agent are alive, for
the whole run. Then, in order:

1. `--members` members start: time until every agent runs once, where rendezvous
   hashing places it.
2. One more joins: the share of agents that moved, and how many others restarted
   (must be 0).
3. One member is SIGKILLed: takeover time, from the kill until every agent runs again
   on the survivors (per agent and all), against the lease's ttl.
4. One member leaves gracefully (SIGTERM): the handover gap, from the signal until its
   agents run elsewhere.

and prints the figures as JSON, with the number of sampled instants at which any agent
ran twice and the number of second copies the agents' own flock refused (both must be 0).
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import tomli_w

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from supervisor.cluster.rendezvous import Placement  # noqa: E402
from tests.etcd_harness import EtcdServer  # noqa: E402
from tests.harness import alive, lines  # noqa: E402


class Sampler(threading.Thread):
    """Keeps {id: [(pid, ppid, first seen)] of live processes}; counts instants twice."""

    def __init__(self, folder: Path, ids: list[str]) -> None:
        super().__init__(daemon=True)
        self.folder = folder
        self.ids = ids
        self.live: dict[str, list[tuple[int, int, float]]] = {i: [] for i in ids}
        self.samples = 0
        self.twice: list[tuple[float, str, list[int]]] = []
        self.deaths: dict[int, float] = {}  # pid -> when first seen gone
        self._offsets = dict.fromkeys(ids, 0)
        self._lock = threading.Lock()
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            now = time.monotonic()
            live = {i: self._sample(i, now) for i in self.ids}
            with self._lock:
                self.live = live
                self.samples += 1
                for agent_id, procs in live.items():
                    if len(procs) > 1:
                        self.twice.append((now, agent_id, [p for p, _, _ in procs]))

    def _sample(self, agent_id: str, now: float) -> list[tuple[int, int, float]]:
        procs = []
        for proc in self.live[agent_id]:
            if alive(proc[0]):
                procs.append(proc)
            else:
                self.deaths[proc[0]] = now
        try:
            with (self.folder / f"{agent_id}.starts").open() as f:
                f.seek(self._offsets[agent_id])
                new = f.read()
        except FileNotFoundError:
            new = ""
        complete, _, _ = new.rpartition("\n")
        if complete:
            self._offsets[agent_id] += len(complete) + 1
            for line in complete.splitlines():
                pid, ppid = map(int, line.split())
                if alive(pid):
                    procs.append((pid, ppid, now))
        return procs

    def snapshot(self) -> dict[str, list[tuple[int, int, float]]]:
        with self._lock:
            return dict(self.live)

    def stop(self) -> None:
        self._halt.set()
        self.join()


class Bench:
    def __init__(self, folder: Path, agents: int, ttl: float) -> None:
        self.folder = folder
        self.ids = [f"agent-{i:04}" for i in range(agents)]
        self.ttl = ttl
        self.etcd = EtcdServer(folder / "etcd")
        self.members: dict[str, subprocess.Popen[bytes]] = {}
        self.manifest = folder / "agents.toml"
        # A witness: the agent holds an flock on its own file while it runs, so a second
        # copy anywhere is refused by the kernel and says so in ID.doubles.
        rec = (
            f'echo "$$ $PPID" >> {folder}/%(id)s.starts; '
            f"flock -n -E 75 {folder}/%(id)s.lock sleep 100000; "
            f'[ $? -eq 75 ] && echo "$$" >> {folder}/%(id)s.doubles'
        )
        doc = {
            "supervisor": {"lease_ttl": ttl, "shutdown_timeout": 20.0, "api": ""},
            "defaults": {"stop_timeout": 5.0},
            "agents": {i: {"command": ["sh", "-c", rec % {"id": i}]} for i in self.ids},
        }
        self.manifest.write_text(tomli_w.dumps(doc))
        self.sampler = Sampler(folder, self.ids)

    def start(self, name: str) -> None:
        log = (self.folder / f"{name}.log").open("wb")
        cmd = [sys.executable, "-m", "supervisor", "run", str(self.manifest)]
        cmd += ["--cluster", f"etcd://{self.etcd.address}/bench", "--member", name]
        self.members[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)

    def member_of(self, ppid: int) -> str | None:
        return next((n for n, p in self.members.items() if p.pid == ppid), None)

    def wait_placed(self, members: list[str], timeout: float = 120.0) -> dict[str, Any]:
        """Wait until each agent runs once on its member; return {id: (pid, first seen)}."""
        placement = Placement(members)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            live = self.sampler.snapshot()
            if all(
                len(live[i]) == 1 and self.member_of(live[i][0][1]) == placement.owner(i)
                for i in self.ids
            ):
                return {i: (live[i][0][0], live[i][0][2]) for i in self.ids}
            time.sleep(0.005)
        raise TimeoutError(f"agents not placed on {members} within {timeout}s")

    def gaps(self, ids: list[str], old: dict[str, Any], new: dict[str, Any]) -> list[float]:
        """Per agent of `ids`: from its old process seen gone to its new one seen alive."""
        return [new[i][1] - self.sampler.deaths[old[i][0]] for i in ids]

    def close(self) -> None:
        for proc in self.members.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.members.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.etcd.close()


def run(agents: int, ttl: float, count: int, keep: bool = False) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    bench = Bench(folder, agents, ttl)
    figures: dict[str, Any] = {"agents": agents, "lease_ttl": ttl, "members": count}
    try:
        bench.etcd.start()
        bench.sampler.start()
        names = [f"m{n}" for n in range(1, count + 1)]
        t0 = time.monotonic()
        for name in names:
            bench.start(name)
        before = bench.wait_placed(names)
        figures["start_s"] = round(time.monotonic() - t0, 3)

        joiner = f"m{count + 1}"
        t0 = time.monotonic()
        bench.start(joiner)
        after = bench.wait_placed([*names, joiner])
        moved = [i for i in bench.ids if after[i][0] != before[i][0]]
        placed_on_joiner = {i for i in bench.ids if Placement([*names, joiner]).owner(i) == joiner}
        gaps = bench.gaps(moved, before, after)
        figures["join"] = {
            "moved_share": round(len(moved) / agents, 3),
            "expected_share": round(1 / (count + 1), 3),
            "others_restarted": len(set(moved) - placed_on_joiner),
            "settled_s (from launching the new member's process)": round(time.monotonic() - t0, 3),
            "handover_gap_median_s": round(statistics.median(gaps), 3),
            "handover_gap_max_s": round(max(gaps), 3),
        }

        all_names = [*names, joiner]
        victim = names[1]
        orphans = [i for i in bench.ids if Placement(all_names).owner(i) == victim]
        survivors = [n for n in all_names if n != victim]
        killed_at = time.monotonic()
        bench.members[victim].send_signal(signal.SIGKILL)
        back = bench.wait_placed(survivors)
        each = [back[i][1] - killed_at for i in orphans]
        figures["sigkill"] = {
            "agents_taken_over": len(orphans),
            "first_back_s": round(min(each), 3),
            "median_back_s": round(statistics.median(each), 3),
            "all_back_s": round(max(each), 3),
            "others_restarted": sum(
                1 for i in bench.ids if i not in orphans and back[i][0] != after[i][0]
            ),
        }

        leaver = survivors[0]
        handed = [i for i in bench.ids if Placement(survivors).owner(i) == leaver]
        left_at = time.monotonic()
        bench.members[leaver].send_signal(signal.SIGTERM)
        rest = [n for n in survivors if n != leaver]
        final = bench.wait_placed(rest)
        back_after = [final[i][1] - left_at for i in handed]
        gaps = bench.gaps(handed, back, final)
        figures["graceful_leave"] = {
            "agents_handed_over": len(handed),
            "median_back_s": round(statistics.median(back_after), 3),
            "all_back_s": round(max(back_after), 3),
            "handover_gap_median_s": round(statistics.median(gaps), 3),
            "handover_gap_max_s": round(max(gaps), 3),
        }
    finally:
        try:
            bench.sampler.stop()
        finally:
            bench.close()  # members and etcd go, whatever failed
        figures["samples"] = bench.sampler.samples
        figures["instants_running_twice"] = len(bench.sampler.twice)
        figures["doubles_caught_by_flock"] = sum(
            len(lines(folder / f"{i}.doubles")) for i in bench.ids
        )
        if keep:
            print(f"members' logs kept in {folder}", file=sys.stderr)
        else:
            shutil.rmtree(folder, ignore_errors=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=300)
    parser.add_argument("--ttl", type=float, default=2.0)
    parser.add_argument("--members", type=int, default=3, help="members at first; one joins")
    parser.add_argument("--keep", action="store_true", help="keep the members' logs")
    args = parser.parse_args()
    started = time.monotonic()
    figures = run(args.agents, args.ttl, args.members, args.keep)
    figures["sample_interval_ms"] = round(
        1000 * (time.monotonic() - started) / max(1, figures["samples"]), 1
    )
    print(json.dumps(figures, indent=2))
    if figures["instants_running_twice"] or figures["doubles_caught_by_flock"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
