"""At most once, caught by the kernel: members in network namespaces against a real etcd,
running witness agents that hold an ``flock`` on their agent's file (tests/netns_harness).

Each scenario drives one of the ways a lease-based cluster breaks: a member paused past
its ttl in the middle of a start, etcd restarted on an empty data folder, a member cut
off while it claims, and all of it on two cores saturated by busy processes. A second
copy of any agent, anywhere, is a double, and there must be none. Each scenario is
bounded (its waits have deadlines, the load ends by itself), and the `net` fixture
tears everything down whatever happens: members, etcd, agents (every process in the
namespaces is SIGKILLed) and the namespaces themselves.

Each test's docstring says which failure of issue 14 it is about. These are the claim
end to end, with real processes, and on the code before issue 14 they failed only in
some runs (as the issue says: doubles in 1 of 5 runs, churn only under load): what a
thawed member does first, its keep-alive or a start, is the scheduler's choice. Each
case also has a deterministic reproduction that the old code fails every time:
tests/integration/test_cluster_member.py (cases 1-3, on a MockClock),
test_cluster_etcd.py (case 4: the loop blocked for twice the ttl) and
test_cluster_security.py (case 5).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from supervisor.cluster.rendezvous import Placement, owner

from ..etcd_harness import EtcdServer, needs_etcd
from ..harness import SupervisorProcess, lines, wait_until
from ..netns_harness import (
    CpuLoad,
    Namespaces,
    doubles,
    install_witness,
    needs_netns,
    running,
    witness_command,
)

pytestmark = [needs_etcd, needs_netns, pytest.mark.slow, pytest.mark.netns]

TTL = 2
LOADED_AGENTS = 60  # the CPU-load scenario: enough starts in a burst to starve a refresh


class NetCluster:
    """Members m1..mN, each in its namespace, sharing one manifest of witness agents."""

    def __init__(self, folder: Path, members: int, agents: dict[str, dict[str, Any]]) -> None:
        self.folder = folder
        self.ids = [i for i, table in agents.items() if table.get("witness", True)]
        install_witness(folder)
        for table in agents.values():
            table.pop("witness", None)
        doc = {"supervisor": {"lease_ttl": TTL, "shutdown_timeout": 10.0}, "agents": agents}
        self.manifest = folder / "agents.toml"
        self.manifest.write_text(tomli_w.dumps(doc))
        self.sockets = Path(tempfile.mkdtemp(prefix="sv-ns-"))
        self.members: dict[str, SupervisorProcess] = {}
        self.group_key: dict[str, str] = {}
        self.codes: dict[str, int | None] | None = None  # set by close()
        self.ns = Namespaces(members)
        try:
            hubs = tuple(Namespaces.hub_address(n) for n in range(1, members + 1))
            self.etcd = EtcdServer(folder / "etcd", netns=self.ns.hub, also_on=hubs)
            self.etcd.start()
        except BaseException:
            self.ns.close()
            shutil.rmtree(self.sockets, ignore_errors=True)
            raise

    def start(self, n: int) -> SupervisorProcess:
        name = f"m{n}"
        sup = SupervisorProcess(
            self.manifest,
            *("--api", f"unix:{self.sockets / name}.sock"),
            *("--cluster", f"etcd://{Namespaces.hub_address(n)}:2379/ns"),
            *("--member", name),
            prefix=self.ns.prefix(n),
            env={"SV_MEMBER": name},
        )
        self.members[name] = sup
        return sup

    def where(self) -> dict[str, str]:
        """{id: member} of the witnesses running exactly once now."""
        now = {i: running(self.folder, i) for i in self.ids}
        return {i: copies[0][1] for i, copies in now.items() if len(copies) == 1}

    def wait_placed(self, members: list[str], timeout: float = 30.0) -> dict[str, str]:
        placement = Placement(members)

        def placed() -> dict[str, str] | None:
            now = self.where()
            if len(now) == len(self.ids) and all(
                now[i] == placement.owner(self.key(i)) for i in self.ids
            ):
                return now
            return None

        return wait_until(placed, timeout, f"every witness running once on {members}")

    def key(self, agent_id: str) -> str:
        """The agent's placement key: its group's, when it is `after` another."""
        return self.group_key.get(agent_id, agent_id)

    def doubles(self) -> dict[str, list[str]]:
        return doubles(self.folder, self.ids)

    def close(self) -> dict[str, int | None]:
        """Stop every member (SIGTERM, each stops its agents); return their exit codes.
        Then SIGKILL whatever is left, stop etcd and delete the namespaces. Idempotent:
        the `net` fixture calls it again, whatever the test did."""
        if self.codes is not None:
            return self.codes
        codes: dict[str, int | None] = {}
        try:
            for sup in self.members.values():
                if sup.proc.poll() is None:
                    sup.signal(signal.SIGCONT)
                    sup.signal(signal.SIGTERM)
            for name, sup in self.members.items():
                try:
                    codes[name] = sup.proc.wait(30)
                except subprocess.TimeoutExpired:
                    codes[name] = None
        finally:
            self.codes = codes
            for sup in self.members.values():
                sup.close()
            self.etcd.close()
            self.ns.close()
            shutil.rmtree(self.sockets, ignore_errors=True)
        return codes


def witnesses(folder: Path, count: int, **keys: Any) -> dict[str, dict[str, Any]]:
    return {
        f"w-{n:02}": {"command": witness_command(folder, f"w-{n:02}"), "stop_timeout": 0.5, **keys}
        for n in range(count)
    }


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Callable[[int, dict[str, dict[str, Any]]], NetCluster]]:
    """`net(members, agents)` makes a `NetCluster` in the test's folder; every one made
    is closed after the test, passed or failed."""
    made: list[NetCluster] = []

    def make(members: int, agents: dict[str, dict[str, Any]]) -> NetCluster:
        made.append(NetCluster(tmp_path, members, agents))
        return made[-1]

    try:
        yield make
    finally:
        for cluster in made:
            cluster.close()


Net = Callable[[int, dict[str, dict[str, Any]]], NetCluster]


def test_a_member_paused_past_its_ttl_mid_start_starts_nothing_on_the_dead_lease(
    net: Net, tmp_path: Path
) -> None:
    """Issue 14, case 1. m1 is SIGSTOPped while it starts a gate that ten witnesses wait
    on (``after``), longer than twice the ttl; m2 takes the group over meanwhile. Thawed,
    m1 must not start the queued witnesses on its dead lease. Before the lease deadline,
    `holds()` was a flag only the keep-alive cleared, and m1 started them next to m2's
    copies whenever a start ran before its keep-alive (the kernel lock caught 6 and 11
    doubles in two runs)."""
    # A gate that takes a second to be ready, and witnesses queued behind it: when m1 is
    # frozen while the gate starts, the witnesses' starts are queued across the pause.
    gate = next(g for g in (f"gate-{n}" for n in range(100)) if owner(g, ["m1", "m2"]) == "m1")
    notify = (
        "import os, socket, time; time.sleep(1); a = os.environ['NOTIFY_SOCKET']; "
        "s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.sendto(b'READY=1', a); "
        "time.sleep(100000)"
    )
    gate_starts = tmp_path / "gate.starts"
    agents: dict[str, dict[str, Any]] = {
        gate: {
            "command": ["sh", "-c", f'echo "$PPID" >> {gate_starts}; exec python3 -c "{notify}"'],
            "ready": "notify",
            "stop_timeout": 0.5,
            "witness": False,
        },
        **witnesses(tmp_path, 10, after=[gate]),
    }
    cluster = net(2, agents)
    cluster.group_key = dict.fromkeys(cluster.ids, gate)
    cluster.start(2)
    cluster.wait_placed(["m2"])
    m1 = cluster.start(1)  # the group moves to m1: m2 stops it, m1 starts the gate
    wait_until(lambda: str(m1.pid) in lines(gate_starts), 30, "the gate starting on m1")
    m1.signal(signal.SIGSTOP)  # frozen mid-start, for twice the ttl at least
    frozen = time.monotonic()
    try:
        cluster.wait_placed(["m2"], timeout=30)  # m2 took the group over
        wait_until(lambda: time.monotonic() - frozen > 2 * TTL, 3 * TTL, "2 ttl frozen")
    finally:
        m1.signal(signal.SIGCONT)
    cluster.wait_placed(["m1", "m2"], timeout=30)  # m1 joined again, took it back
    assert cluster.doubles() == {}
    assert cluster.close() == {"m1": 0, "m2": 0}


def test_etcd_restarted_on_an_empty_data_folder_reforms_without_doubles(
    net: Net, tmp_path: Path
) -> None:
    """Issue 14, case 2. etcd is SIGKILLed and comes back on an empty data folder while
    three members run twelve witnesses. Before the epoch key, the first member back saw
    only itself, placed everything on itself and claimed keys that no longer existed
    while the others still ran their agents: doubles (in 1 of 5 runs). Now the first one
    back founds a new epoch with a quiet ttl (the log line says so; the old code never
    wrote it), and whoever saw the old one fences first."""
    cluster = net(3, witnesses(tmp_path, 12))
    for n in (1, 2, 3):
        cluster.start(n)
    cluster.wait_placed(["m1", "m2", "m3"])
    cluster.etcd.wipe()  # SIGKILL, data folder gone
    cluster.etcd.start()
    cluster.wait_placed(["m1", "m2", "m3"], timeout=40)
    assert cluster.doubles() == {}
    outputs = [sup.output() for sup in cluster.members.values()]
    assert any("nothing is claimed for one ttl" in out for out in outputs)
    assert set(cluster.close().values()) == {0}


def test_a_member_cut_off_while_it_claims_fences_and_rejoins(net: Net, tmp_path: Path) -> None:
    """Issue 14, case 3, end to end: m2's link to etcd goes down right after it joined,
    while its claims wait on the keys m1 is releasing; it fences, and once healed it must
    claim and start its share again. Before, the agents fenced while claims were in
    flight stayed `stopped` for good (the reconcile saw unchanged specs): the last
    placement never came. (tests/integration/test_cluster_member.py pins the claims in
    flight deterministically, on a MockClock.)"""
    cluster = net(2, witnesses(tmp_path, 16))
    cluster.start(1)
    cluster.wait_placed(["m1"])
    m2 = cluster.start(2)
    m2.wait_log("joined", timeout=30)
    cluster.ns.cut(2)  # claims in flight, or about to be
    m2.wait_log("stopping every agent here", timeout=30)
    cluster.wait_placed(["m1"], timeout=30)
    cluster.ns.heal(2)
    cluster.wait_placed(["m1", "m2"], timeout=30)
    assert cluster.doubles() == {}
    assert set(cluster.close().values()) == {0}


def test_under_cpu_load_a_join_moves_only_its_share_and_a_healed_member_rejoins(
    net: Net, tmp_path: Path
) -> None:
    """Issue 14, case 4, end to end: the cluster on two cores kept busy by two spinning
    processes per core, with a ttl of 2 s. Whatever the load, no agent runs twice, a
    member cut off and healed rejoins, and every member exits 0 on SIGTERM; while no
    lease was lost, a join moves exactly the newcomer's rendezvous share (no moves
    between old members). On the code before, under load leases were lost over and
    over (10 fences in 20 s in one run here), the join moved about twice its share, a
    healed member never rejoined and one member exited 1; how often depends on the
    load, so the deterministic reproduction is test_cluster_etcd.py's loop blocked for
    twice the ttl. (On a machine loaded well past its cores, a ttl of 2 s can still
    lose a lease: docs/cluster.md, sizing lease_ttl.)"""
    cluster = net(3, witnesses(tmp_path, LOADED_AGENTS))
    with CpuLoad(limit=120, cores=2 * (os.cpu_count() or 2)):
        cluster.start(1)
        cluster.start(2)
        before = cluster.wait_placed(["m1", "m2"], timeout=60)
        pids = {i: running(tmp_path, i)[0][0] for i in cluster.ids}
        cluster.start(3)
        after = cluster.wait_placed(["m1", "m2", "m3"], timeout=60)
        moved = {i for i in cluster.ids if running(tmp_path, i)[0][0] != pids[i]}
        lost = lost_leases(cluster)
        print(f"leases lost under load before the cut: {lost}")
        if not any(lost.values()):  # (a lost lease restarts that member's agents too)
            assert moved == {i for i in cluster.ids if after[i] == "m3"}
        assert all(before[i] == after[i] for i in cluster.ids if i not in moved)
        cluster.ns.cut(1)
        cluster.wait_placed(["m2", "m3"], timeout=60)
        cluster.ns.heal(1)
        cluster.wait_placed(["m1", "m2", "m3"], timeout=60)
    assert cluster.doubles() == {}
    assert cluster.close() == {"m1": 0, "m2": 0, "m3": 0}


def lost_leases(cluster: NetCluster) -> dict[str, int]:
    """{member: how many times it lost its lease (and stopped everything)}."""
    return {
        name: sup.output().count("stopping every agent here")
        for name, sup in cluster.members.items()
    }
