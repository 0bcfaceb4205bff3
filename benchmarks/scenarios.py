"""The measurements: one session of a peer with N process agents, the spawn floor, and the
in-process scale run of ours.

A process session launches the peer and measures, in this order: start (launch -> all N
`sleep` children exec'd), RSS and idle CPU (at the idle N only), crash -> running for K
distinct agents, a 10 % reload (where the peer can), and shutdown (SIGTERM -> supervisor
exited and every child gone). All of it is read from /proc, the same way for every peer.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

import peers
import procfs

CRASH_POLL = 100e-6  # seconds between /proc reads while waiting for a replacement
START_POLL = 0.001


@dataclass
class Config:
    crashes: int = 25
    idle_seconds: float = 10.0
    idle_n: int = 500
    settle: float = 1.0
    start_timeout: float = 300.0
    reload_timeout: float = 600.0
    shutdown_timeout: float = 120.0
    cli_reps: int = 20


@dataclass
class Session:
    """What one session measured (seconds unless the name says otherwise)."""

    values: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def agent_set(n: int) -> dict[str, str]:
    """N agents s0..s{N-1}; each sleeps a distinct number of seconds, which names it in /proc."""
    return {f"s{i}": str(100000 + i) for i in range(n)}


def edited(agents: dict[str, str]) -> tuple[dict[str, str], set[str], set[str], set[str]]:
    """The 10 % edit: change every 10th agent, remove the next ones, add as many new ones.

    Returns (new agents, changed ids, removed ids, added ids).
    """
    n = len(agents)
    ids = list(agents)
    changed = {aid for i, aid in enumerate(ids) if i % 10 == 0}
    removed = {aid for i, aid in enumerate(ids) if i % 10 == 1}
    new = {aid: arg for aid, arg in agents.items() if aid not in removed}
    for aid in changed:
        new[aid] = str(300000 + int(aid[1:]))
    added = {f"s{n + j}" for j in range(len(removed))}
    for aid in sorted(added, key=lambda a: int(a[1:])):
        new[aid] = str(100000 + int(aid[1:]))
    return new, changed, removed, added


def wait_roots(peer: peers.Peer, timeout: float) -> list[int]:
    deadline = time.perf_counter() + timeout
    while True:
        roots = peer.roots()
        if roots:
            return roots
        why = peer.failed()
        if why:
            raise RuntimeError(why)
        if time.perf_counter() > deadline:
            raise TimeoutError("no supervisor process appeared")
        time.sleep(START_POLL)


def measure_start(peer: peers.Peer, n: int, cfg: Config) -> tuple[float, procfs.AgentWatch]:
    """Launch and wait until all N `sleep` children have exec'd; (seconds, watch)."""
    t0 = time.perf_counter()
    peer.launch()
    roots = wait_roots(peer, cfg.start_timeout)
    watch = procfs.AgentWatch(roots)
    deadline = t0 + cfg.start_timeout
    watch.first = None
    while True:
        found = watch.scan()
        now = time.perf_counter()
        if found and watch.first is None:
            watch.first = now - t0
        if len(found) >= n:
            return now - t0, watch
        why = peer.failed()
        if why:
            raise RuntimeError(why)
        if now > deadline:
            raise TimeoutError(f"{len(found)}/{n} running after {cfg.start_timeout:.0f} s")
        time.sleep(START_POLL)


def measure_idle(peer: peers.Peer, seconds: float) -> dict[str, float]:
    """RSS and CPU / wake-ups of the supervisor and its helpers while nothing happens."""
    pids = peer.roots() + peer.helpers()
    u0 = procfs.usage(pids)
    time.sleep(seconds)
    pids = peer.roots() + peer.helpers()
    u1 = procfs.usage(pids)
    scale = 10.0 / seconds
    rss = sum(procfs.rss_kib(p) for p in peer.roots())
    helper_rss = sum(procfs.rss_kib(p) for p in peer.helpers())
    pss = sum(procfs.pss_kib(p) for p in peer.roots() + peer.helpers())
    return {
        "rss_mib": (rss + helper_rss) / 1024,
        "pss_mib": pss / 1024,
        "rss_helpers_mib": helper_rss / 1024,
        "helpers": float(len(peer.helpers())),
        "threads": float(u1.threads),
        "idle_cpu_ms": (u1.cpu_ns - u0.cpu_ns) / 1e6 * scale,
        "idle_ticks": (u1.ticks - u0.ticks) * scale,
        "idle_wakeups": (u1.voluntary - u0.voluntary) * scale,
        "idle_involuntary": (u1.involuntary - u0.involuntary) * scale,
    }


def crash_once(roots: list[int], arg: str, pid: int, timeout: float = 10.0) -> float:
    """SIGKILL the agent `pid` (sleeping `arg`); seconds until a new `sleep arg` has exec'd.

    The supervisors' children are listed until a new one appears; then that one alone is
    watched until it has exec'd (a list of N children read every 0.1 ms would be most of a
    core, taken from the supervisor and the new child while the new child execs).
    """
    before = {p for r in roots for p in procfs.children(r)}
    new: list[int] = []
    t0 = time.perf_counter()
    os.kill(pid, signal.SIGKILL)
    for polls in itertools.count():
        if not new or polls % 20 == 0:  # (and every 2 ms: a new one may not be it)
            new = [p for r in roots for p in procfs.children(r) if p not in before]
        for p in new:
            if procfs.sleep_arg(p) == arg:
                return time.perf_counter() - t0
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError(f"no replacement for `sleep {arg}` within {timeout:.0f} s")
        time.sleep(CRASH_POLL)


def measure_crashes(watch: procfs.AgentWatch, n: int, k: int) -> list[float]:
    running = watch.scan()
    args = sorted(running, key=int)
    picks = [args[(i * len(args)) // k + 1] for i in range(min(k, len(args) - 1))]
    out: list[float] = []
    for arg in picks:
        pid = running[arg]
        out.append(crash_once(watch.roots, arg, pid))
        time.sleep(0.02)
    return out


CLI_ACTIONS = ("status", "stop", "start", "logs")


def measure_cli(
    peer: peers.Peer, agents: list[str], reps: int
) -> tuple[dict[str, float], list[str]]:
    """Wall time of the control commands a user types, each run `reps` times: medians.

    `stop` and `start` alternate on distinct agents (each stopped agent is started again);
    `status` lists every agent. Returns ({"cli_ACTION": median seconds}, errors).
    """
    times: dict[str, list[float]] = {a: [] for a in CLI_ACTIONS}
    errors: list[str] = []
    env = peer.env()

    def timed(action: str, agent_id: str) -> None:
        argv = peer.cli(action, agent_id)
        if argv is None:
            return
        t0 = time.perf_counter()
        done = subprocess.run(
            argv, env=env, cwd=peer.dir, capture_output=True, timeout=120, check=False
        )
        elapsed = time.perf_counter() - t0
        # status exits 1 while an agent is not up: an answer all the same
        if done.returncode not in (0, 1) or (action != "status" and done.returncode != 0):
            err = (done.stderr or done.stdout).decode(errors="replace").strip()[-200:]
            errors.append(f"{action} {agent_id}: exit {done.returncode}: {err}")
            return
        times[action].append(elapsed)

    step = max(1, len(agents) // max(1, reps))
    picks = [agents[(i * step + 3) % len(agents)] for i in range(reps)]
    for agent_id in picks:
        timed("stop", agent_id)
        timed("start", agent_id)
    for agent_id in picks:
        timed("status", agent_id)
        timed("logs", agent_id)
    values = {f"cli_{a}": statistics.median(ts) for a, ts in times.items() if ts}
    return values, errors[:5]


def python_floor(python: str, reps: int) -> float:
    """The median wall time of `python -c pass`: what any Python CLI pays before its code."""
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        subprocess.run([python, "-c", "pass"], check=True)
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def measure_reload(
    peer: peers.Peer, watch: procfs.AgentWatch, agents: dict[str, str], timeout: float
) -> tuple[dict[str, float], dict[str, Any]]:
    """Apply the 10 % edit; seconds until /proc shows exactly the new set of agents."""
    new, changed, removed, added = edited(agents)
    before = watch.scan()
    expected = set(new.values())
    t0 = time.perf_counter()
    info = peer.reload(new)
    t_answer = time.perf_counter() - t0

    def converged() -> bool:
        pids: dict[int, str] = {}
        for root in watch.roots:
            for p in procfs.children(root):
                a = procfs.sleep_arg(p)
                if a is not None:
                    pids[p] = a
        return len(pids) == len(expected) and set(pids.values()) == expected

    peers.wait_until(converged, timeout=timeout, interval=0.001)
    t_conv = time.perf_counter() - t0
    after = watch.scan()
    unchanged = [a for aid, a in agents.items() if aid not in changed | removed]
    restarted = sum(1 for a in unchanged if after.get(a) != before.get(a))
    info.update(changed=len(changed), removed=len(removed), added=len(added))
    return {
        "reload": t_conv,
        "reload_answer": t_answer,
        "reload_unchanged_restarted": float(restarted),
    }, info


def measure_shutdown(peer: peers.Peer, watch: procfs.AgentWatch, timeout: float) -> float:
    """SIGTERM; seconds until the supervisor has exited and every child is gone."""
    kids = list(watch.scan().values()) + peer.helpers()
    roots = peer.roots()
    t0 = time.perf_counter()
    peer.terminate()
    while True:
        done = peer.exited() and not any(procfs.alive(p) for p in kids)
        now = time.perf_counter()
        if done:
            break
        if now - t0 > timeout:
            left = sum(1 for p in kids if procfs.alive(p))
            raise TimeoutError(f"after {timeout:.0f} s: exited={peer.exited()}, {left} children")
        time.sleep(0.0005)
    procfs.reap([*roots, *kids])
    return now - t0


def process_session(
    peer: peers.Peer,
    n: int,
    cfg: Config,
    *,
    idle: bool,
    crashes: int,
    reload: bool,
    cli: bool = False,
) -> Session:
    """One launch of `peer` with N agents; a step that fails is reported, the next ones run."""
    s = Session()
    agents = agent_set(n)
    peer.prepare(str(n), agents)

    def step(name: str, fn: Any) -> Any:
        try:
            return fn()
        except Exception as e:
            s.errors.append(f"{name}: {type(e).__name__}: {e}")
            return None

    try:
        started = step("start", lambda: measure_start(peer, n, cfg))
        if started is None:
            return s
        s.values["start"], watch = started
        if watch.first is not None:
            s.values["start_first"] = watch.first
        time.sleep(cfg.settle)
        if idle:
            step("idle", lambda: s.values.update(measure_idle(peer, cfg.idle_seconds)))
        if crashes:
            samples = step("crash", lambda: measure_crashes(watch, n, crashes))
            if samples:
                s.info["crash_samples_ms"] = [round(x * 1e3, 3) for x in samples]
                s.values["crash_p50"] = statistics.median(samples)
                s.values["crash_max"] = max(samples)
        if cli and cfg.cli_reps:
            done_cli = step("cli", lambda: measure_cli(peer, list(agents), cfg.cli_reps))
            if done_cli is not None:
                s.values.update(done_cli[0])
                s.errors.extend(f"cli: {e}" for e in done_cli[1])
            watch = procfs.AgentWatch(peer.roots())
        if reload and peer.can_reload:
            time.sleep(0.2)
            done = step("reload", lambda: measure_reload(peer, watch, agents, cfg.reload_timeout))
            if done is not None:
                s.values.update(done[0])
                s.info["reload"] = done[1]
            watch = procfs.AgentWatch(peer.roots())
            time.sleep(0.2)
        t = step("shutdown", lambda: measure_shutdown(peer, watch, cfg.shutdown_timeout))
        if t is not None:
            s.values["shutdown"] = t
    finally:
        peer.kill()
    return s


# -- the floor ---------------------------------------------------------------------------


def floor_spawn_sleep(n: int) -> float:
    """posix_spawn `sleep` N times serially, each returning once exec'd, none waited for."""
    pids: list[int] = []
    env = dict(os.environ)
    try:
        t0 = time.perf_counter()
        for i in range(n):
            pids.append(os.posix_spawn(peers.SLEEP, ["sleep", str(900000 + i)], env))
        return time.perf_counter() - t0
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in pids:
            os.waitpid(pid, 0)


def floor_spawn_wait(n: int) -> float:
    """fork+exec+wait of the agents' own binary (`sleep 0`) N times serially: the floor."""
    env = dict(os.environ)
    t0 = time.perf_counter()
    for _ in range(n):
        pid = os.posix_spawn(peers.SLEEP, ["sleep", "0"], env)
        os.waitpid(pid, 0)
    return time.perf_counter() - t0


# -- in-process scale (ours only) -------------------------------------------------------------


def _wait_http(port: int, path: str, timeout: float, proc_failed: Any) -> float:
    """Poll GET `path` until it answers 200; seconds it took."""
    t0 = time.perf_counter()
    while True:
        try:
            status, _ = peers.request(port, "GET", path, timeout=30)
            if status == 200:
                return time.perf_counter() - t0
            pause = 0.01
        except OSError:
            pause = 0.002
        why = proc_failed()
        if why:
            raise RuntimeError(why)
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError(f"GET {path} not 200 within {timeout:.0f} s")
        time.sleep(pause)


def inprocess_session(ours: peers.Ours, count: int, cfg: Config) -> Session:
    """10,000 (or `count`) idle in-process agents: start, memory, 10 % reload, shutdown."""
    s = Session()
    module = "bench_idle_agent"
    ours.prepare(f"inproc-{count}", {})
    shutil.copy(peers.BENCH / "agents" / "idle.py", ours.dir / f"{module}.py")
    ours.write_inprocess(count, set(), module)
    try:
        t0 = time.perf_counter()
        ours.launch()
        t_api = _wait_http(ours.port, "/healthz", cfg.start_timeout, ours.failed)
        _wait_http(ours.port, "/readyz", cfg.start_timeout, ours.failed)
        s.values["inproc_ready"] = time.perf_counter() - t0
        s.values["inproc_api_up"] = t_api
        time.sleep(cfg.settle)
        s.values["inproc_rss_mib"] = procfs.rss_kib(ours.roots()[0]) / 1024
        if count:
            changed = set(range(0, count, 10))
            _, before = peers.request(ours.port, "GET", "/agents", timeout=60)
            ours.write_inprocess(count, changed, module)
            t1 = time.perf_counter()
            status, body = peers.request(ours.port, "POST", "/reload", timeout=120)
            s.values["inproc_reload"] = time.perf_counter() - t1
            if status != 200:
                raise RuntimeError(f"POST /reload answered {status}: {str(body)[:300]}")
            s.info["reload"] = peers.summarize_reload(body)
            _, after = peers.request(ours.port, "GET", "/agents", timeout=60)
            touched = _touched(before, after, {f"a{i}" for i in changed})
            s.values["inproc_unchanged_restarted"] = float(len(touched))
            s.info["touched_examples"] = touched[:5]
        roots = ours.roots()
        t2 = time.perf_counter()
        ours.terminate()
        peers.wait_until(ours.exited, timeout=cfg.shutdown_timeout, interval=0.0005)
        s.values["inproc_shutdown"] = time.perf_counter() - t2
        procfs.reap(roots)
    except Exception as e:
        s.errors.append(f"{type(e).__name__}: {e}")
    finally:
        ours.kill()
    return s


def _touched(before: Any, after: Any, changed: set[str]) -> list[Any]:
    """Unchanged agents whose `since`, `restarts` or `state` moved between two GET /agents.

    `since` may be rendered from a monotonic clock at each read, so it is compared to 10 ms.
    """

    def index(doc: Any) -> dict[str, tuple[Any, Any, Any]]:
        agents = doc.get("agents", []) if isinstance(doc, dict) else []
        return {a["id"]: (a.get("since"), a.get("restarts"), a.get("state")) for a in agents}

    def same(x: tuple[Any, Any, Any] | None, y: tuple[Any, Any, Any] | None) -> bool:
        if x is None or y is None:
            return x is y
        if x[1:] != y[1:]:
            return False
        if isinstance(x[0], int | float) and isinstance(y[0], int | float):
            return abs(x[0] - y[0]) < 0.010
        return bool(x[0] == y[0])

    b, a = index(before), index(after)
    return [
        (aid, v, a.get(aid))
        for aid, v in b.items()
        if aid not in changed and not same(v, a.get(aid))
    ]
