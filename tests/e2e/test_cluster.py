"""Scale-out end to end: real `supervisor run` members sharing one manifest through a real
etcd, with process agents that record each start ("PID PPID" in ID.starts; the parent is
the member's supervisor). A sampler thread looks at every agent's live processes about
every 10 ms during a whole scenario: no agent may ever be seen running twice.
"""

from __future__ import annotations

import itertools
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import tomli_w

from supervisor.cluster.rendezvous import Placement

from ..etcd_harness import EtcdServer, PausableProxy, needs_etcd
from ..harness import SupervisorProcess, alive, lines, wait_until

pytestmark = [needs_etcd, pytest.mark.slow]

TTL = 2  # lease_ttl: short, so that takeovers happen within the test's seconds
IDS = [f"agent-{i:02}" for i in range(24)]
_namespaces = itertools.count()


def write_manifest(folder: Path, ids: list[str]) -> Path:
    """A manifest of process agents that record their starts, then sleep."""
    agents = {
        agent_id: {
            "command": [
                "sh",
                "-c",
                f'echo "$$ $PPID" >> {folder}/{agent_id}.starts; exec sleep 1000',
            ],
            "stop_timeout": 2.0,
        }
        for agent_id in ids
    }
    doc = {"supervisor": {"lease_ttl": TTL, "shutdown_timeout": 5.0}, "agents": agents}
    path = folder / "agents.toml"
    path.write_text(tomli_w.dumps(doc))
    return path


class Sampler:
    """Samples, about every 10 ms, which processes of each agent are alive."""

    def __init__(self, folder: Path, ids: list[str]) -> None:
        self.folder = folder
        self.ids = ids
        self.twice: list[tuple[str, list[int]]] = []
        self.samples = 0
        self._dead: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def live(self) -> dict[str, list[tuple[int, int]]]:
        """{id: [(pid, parent pid) of each live process]}."""
        found: dict[str, list[tuple[int, int]]] = {}
        for agent_id in self.ids:
            found[agent_id] = []
            for line in lines(self.folder / f"{agent_id}.starts"):
                pid, ppid = map(int, line.split())
                if pid in self._dead:
                    continue
                if alive(pid):
                    found[agent_id].append((pid, ppid))
                else:
                    self._dead.add(pid)  # never alive again: pids are not reused this fast
        return found

    def _run(self) -> None:
        while not self._stop.is_set():
            for agent_id, procs in self.live().items():
                if len(procs) > 1:
                    self.twice.append((agent_id, [pid for pid, _ in procs]))
            self.samples += 1
            self._stop.wait(0.01)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class Cluster:
    """Members of one cluster, each a `supervisor run` with its API on a unix socket."""

    def __init__(self, folder: Path, etcd: EtcdServer, ids: list[str] = IDS) -> None:
        self.folder = folder
        self.etcd = etcd
        self.ids = ids
        self.manifest = write_manifest(folder, ids)
        self.namespace = f"t{next(_namespaces)}"
        self.members: dict[str, SupervisorProcess] = {}
        self.sockets = Path(tempfile.mkdtemp(prefix="sv-cl-"))

    def start(self, name: str, etcd_address: str | None = None) -> SupervisorProcess:
        address = f"etcd://{etcd_address or self.etcd.address}/{self.namespace}"
        sup = SupervisorProcess(
            self.manifest,
            *("--api", f"unix:{self.sockets / name}.sock"),
            *("--cluster", address, "--member", name),
        )
        self.members[name] = sup
        return sup

    def member_of(self, ppid: int) -> str | None:
        return next((n for n, s in self.members.items() if s.pid == ppid), None)

    def running(self, sampler: Sampler) -> dict[str, tuple[int, str | None]]:
        """{id: (pid, member)} of the agents running exactly once right now."""
        return {
            agent_id: (procs[0][0], self.member_of(procs[0][1]))
            for agent_id, procs in sampler.live().items()
            if len(procs) == 1
        }

    def wait_placed(
        self, sampler: Sampler, members: list[str], timeout: float = 15.0
    ) -> dict[str, int]:
        """Wait until every agent runs once, on the member rendezvous hashing places it
        on among `members`; return {id: pid}."""
        placement = Placement(members)

        def placed() -> dict[str, int] | None:
            now = self.running(sampler)
            if len(now) == len(self.ids) and all(now[i][1] == placement.owner(i) for i in self.ids):
                return {i: pid for i, (pid, _) in now.items()}
            return None

        return wait_until(placed, timeout, f"every agent running once on {members}")

    def api(self, name: str, method: str, path: str, **kw: Any) -> httpx.Response:
        transport = httpx.HTTPTransport(uds=str(self.sockets / f"{name}.sock"))
        with httpx.Client(base_url="http://m", transport=transport, timeout=10) as client:
            return client.request(method, path, **kw)

    def close(self) -> None:
        """Stop every member gracefully (each stops its agents), then make sure."""
        running = [s for s in self.members.values() if s.proc.poll() is None]
        for sup in running:
            sup.signal(signal.SIGTERM)
        try:
            for sup in running:
                sup.wait_exit(timeout=10)
        finally:
            for sup in self.members.values():
                sup.close()
            shutil.rmtree(self.sockets, ignore_errors=True)


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    with EtcdServer(tmp_path_factory.mktemp("etcd") / "data") as server:
        yield server


@pytest.fixture
def cluster(tmp_path: Path, etcd: EtcdServer) -> Iterator[Cluster]:
    c = Cluster(tmp_path, etcd)
    try:
        yield c
    finally:
        c.close()


def test_three_members_run_each_agent_once_and_a_fourth_takes_only_its_share(
    cluster: Cluster,
) -> None:
    with Sampler(cluster.folder, cluster.ids) as sampler:
        for name in ("m1", "m2", "m3"):
            cluster.start(name)
        before = cluster.wait_placed(sampler, ["m1", "m2", "m3"])
        cluster.start("m4")
        after = cluster.wait_placed(sampler, ["m1", "m2", "m3", "m4"])
    moved = {i for i in cluster.ids if after[i] != before[i]}
    to_m4 = {i for i in cluster.ids if Placement(["m1", "m2", "m3", "m4"]).owner(i) == "m4"}
    assert moved == to_m4  # the others kept running: same pid, no restart
    assert 0.1 < len(moved) / len(cluster.ids) < 0.45  # about a quarter
    assert sampler.twice == []
    assert sampler.samples > 50


def test_a_killed_members_agents_come_back_on_the_others_within_the_ttl(
    cluster: Cluster,
) -> None:
    with Sampler(cluster.folder, cluster.ids) as sampler:
        for name in ("m1", "m2", "m3"):
            cluster.start(name)
        before = cluster.wait_placed(sampler, ["m1", "m2", "m3"])
        killed_at = time.monotonic()
        cluster.members["m2"].signal(signal.SIGKILL)
        after = cluster.wait_placed(sampler, ["m1", "m3"], timeout=TTL + 10)
        took = time.monotonic() - killed_at
    assert took < TTL + 3, f"takeover took {took:.1f}s"
    survivors = {i for i in cluster.ids if Placement(["m1", "m2", "m3"]).owner(i) != "m2"}
    assert {i for i in survivors if after[i] == before[i]} == survivors
    assert sampler.twice == []


def test_a_member_cut_off_from_etcd_stops_its_agents_before_others_start_them(
    cluster: Cluster,
) -> None:
    proxy = PausableProxy(cluster.etcd.address)
    try:
        with Sampler(cluster.folder, cluster.ids) as sampler:
            cut = cluster.start("m1", etcd_address=proxy.address)
            cluster.start("m2")
            cluster.start("m3")
            cluster.wait_placed(sampler, ["m1", "m2", "m3"])
            proxy.pause()
            cluster.wait_placed(sampler, ["m2", "m3"], timeout=TTL + 10)
            cut.wait_log("cannot refresh the lease")
            proxy.resume()
            cluster.wait_placed(sampler, ["m1", "m2", "m3"], timeout=TTL + 10)
        assert sampler.twice == []
    finally:
        proxy.close()


def test_the_cluster_recovers_from_an_etcd_restart(cluster: Cluster) -> None:
    with Sampler(cluster.folder, cluster.ids) as sampler:
        for name in ("m1", "m2", "m3"):
            cluster.start(name)
        cluster.wait_placed(sampler, ["m1", "m2", "m3"])
        # A loaded machine may have fenced a member once already: count from here.
        fenced = {
            name: sup.output().count("agents stopped") for name, sup in cluster.members.items()
        }
        cluster.etcd.stop()
        try:
            # Down longer than half the ttl: every member stops its agents.
            for name, sup in cluster.members.items():
                sup.wait_log("agents stopped", timeout=TTL + 5, count=fenced[name] + 1)
            assert cluster.running(sampler) == {}
        finally:
            cluster.etcd.start()
        cluster.wait_placed(sampler, ["m1", "m2", "m3"], timeout=TTL + 10)
    assert sampler.twice == []


def test_agents_loaded_over_any_member_run_once_in_the_cluster(cluster: Cluster) -> None:
    extra = Path(cluster.folder) / "extra.starts"
    command = ["sh", "-c", f'echo "$$ $PPID" >> {extra}; exec sleep 1000']
    with Sampler(cluster.folder, [*cluster.ids, "extra"]) as sampler:
        for name in ("m1", "m2"):
            cluster.start(name)
        cluster.wait_placed(sampler, ["m1", "m2"])
        answer = cluster.api("m1", "POST", "/agents", json={"id": "extra", "command": command})
        assert answer.status_code == 202, answer.text
        owner = Placement(["m1", "m2"]).owner("extra")
        assert answer.json() == {"id": "extra", "stored": "cluster", "member": owner}
        pid = wait_until(
            lambda: (procs := sampler.live()["extra"]) and procs[0][0], what="extra running"
        )
        assert cluster.member_of(sampler.live()["extra"][0][1]) == owner
        # GET /agents on a member shows what it runs; GET /cluster shows every placement.
        listed = {a["id"] for a in cluster.api(owner, "GET", "/agents").json()["agents"]}
        assert "extra" in listed
        view = cluster.api("m2", "GET", "/cluster").json()
        assert set(view["members"]) == {"m1", "m2"}
        assert view["agents"]["extra"] == {"member": owner, "held_by": owner}
        assert (
            cluster.api(
                "m2", "POST", "/agents", json={"id": "extra", "command": command}
            ).status_code
            == 409
        )
        assert cluster.api("m2", "DELETE", "/agents/agent-00").status_code == 409
        assert cluster.api("m2", "DELETE", "/agents/extra").status_code == 200
        wait_until(lambda: not alive(pid), what="extra stopped")
        assert cluster.api("m1", "DELETE", "/agents/extra").status_code == 404
    assert sampler.twice == []
