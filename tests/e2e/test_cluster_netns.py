"""At most once, caught by the kernel: members in network namespaces against a real etcd,
running witness agents that hold an ``flock`` on their agent's file (tests/netns_harness).

Each scenario drives one of the ways a lease-based cluster breaks: a member paused past
its ttl in the middle of a start, etcd restarted on an empty data folder, a member cut
off while it claims, and all of it on two cores saturated by busy processes. A second
copy of any agent, anywhere, is a double, and there must be none. Each scenario is
bounded (its waits have deadlines, the load ends by itself).
"""

from __future__ import annotations

import signal
import tempfile
import time
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
        self.ns = Namespaces(members)
        try:
            hubs = tuple(Namespaces.hub_address(n) for n in range(1, members + 1))
            self.etcd = EtcdServer(folder / "etcd", netns=self.ns.hub, also_on=hubs)
            self.etcd.start()
        except BaseException:
            self.ns.close()
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
        """Stop every member (SIGTERM, each stops its agents); return their exit codes."""
        codes: dict[str, int | None] = {}
        try:
            for sup in self.members.values():
                if sup.proc.poll() is None:
                    sup.signal(signal.SIGCONT)
                    sup.signal(signal.SIGTERM)
            for name, sup in self.members.items():
                try:
                    codes[name] = sup.proc.wait(20)
                except Exception:
                    codes[name] = None
        finally:
            for sup in self.members.values():
                sup.close()
            self.etcd.close()
            self.ns.close()
        return codes


def witnesses(folder: Path, count: int, **keys: Any) -> dict[str, dict[str, Any]]:
    return {
        f"w-{n:02}": {"command": witness_command(folder, f"w-{n:02}"), "stop_timeout": 0.5, **keys}
        for n in range(count)
    }


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path


def test_a_member_paused_past_its_ttl_mid_start_starts_nothing_on_the_dead_lease(
    folder: Path,
) -> None:
    # A gate that takes a second to be ready, and witnesses queued behind it: when m1 is
    # frozen while the gate starts, the witnesses' starts are queued across the pause.
    gate = next(g for g in (f"gate-{n}" for n in range(100)) if owner(g, ["m1", "m2"]) == "m1")
    notify = (
        "import os, socket, time; time.sleep(1); a = os.environ['NOTIFY_SOCKET']; "
        "s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.sendto(b'READY=1', a); "
        "time.sleep(100000)"
    )
    gate_starts = folder / "gate.starts"
    agents: dict[str, dict[str, Any]] = {
        gate: {
            "command": ["sh", "-c", f'echo "$PPID" >> {gate_starts}; exec python3 -c "{notify}"'],
            "ready": "notify",
            "stop_timeout": 0.5,
            "witness": False,
        },
        **witnesses(folder, 10, after=[gate]),
    }
    cluster = NetCluster(folder, 2, agents)
    cluster.group_key = dict.fromkeys(cluster.ids, gate)
    try:
        cluster.start(2)
        cluster.wait_placed(["m2"])
        m1 = cluster.start(1)  # the group moves to m1: m2 stops it, m1 starts the gate
        wait_until(lambda: str(m1.pid) in lines(gate_starts), 30, "the gate starting on m1")
        m1.signal(signal.SIGSTOP)  # frozen mid-start, for twice the ttl at least
        frozen = time.monotonic()
        try:
            cluster.wait_placed(["m2"], timeout=TTL * 5)  # m2 took the group over
            wait_until(lambda: time.monotonic() - frozen > 2 * TTL, 3 * TTL, "2 ttl frozen")
        finally:
            m1.signal(signal.SIGCONT)
        cluster.wait_placed(["m1", "m2"], timeout=30)  # m1 joined again, took it back
        assert cluster.doubles() == {}
        m1.wait_log("not provably live", timeout=1)  # the queued starts were refused
    finally:
        codes = cluster.close()
    assert codes == {"m1": 0, "m2": 0}


def test_etcd_restarted_on_an_empty_data_folder_reforms_without_doubles(folder: Path) -> None:
    cluster = NetCluster(folder, 3, witnesses(folder, 12))
    try:
        for n in (1, 2, 3):
            cluster.start(n)
        cluster.wait_placed(["m1", "m2", "m3"])
        cluster.etcd.wipe()  # SIGKILL, data folder gone
        cluster.etcd.start()
        cluster.wait_placed(["m1", "m2", "m3"], timeout=40)
        assert cluster.doubles() == {}
        outputs = [sup.output() for sup in cluster.members.values()]
        assert any("nothing is claimed for one ttl" in out for out in outputs)
    finally:
        codes = cluster.close()
    assert set(codes.values()) == {0}


def test_a_member_cut_off_while_it_claims_fences_and_rejoins(folder: Path) -> None:
    cluster = NetCluster(folder, 2, witnesses(folder, 16))
    try:
        cluster.start(1)
        cluster.wait_placed(["m1"])
        m2 = cluster.start(2)
        m2.wait_log("joined", timeout=20)
        cluster.ns.cut(2)  # claims in flight, or about to be
        m2.wait_log("stopping every agent here", timeout=TTL * 5)
        cluster.wait_placed(["m1"], timeout=TTL * 5)
        cluster.ns.heal(2)
        cluster.wait_placed(["m1", "m2"], timeout=30)
        assert cluster.doubles() == {}
    finally:
        codes = cluster.close()
    assert set(codes.values()) == {0}


def test_under_cpu_load_a_join_moves_only_its_share_and_a_healed_member_rejoins(
    folder: Path,
) -> None:
    cluster = NetCluster(folder, 3, witnesses(folder, 24))
    try:
        with CpuLoad(limit=90):
            cluster.start(1)
            cluster.start(2)
            before = cluster.wait_placed(["m1", "m2"], timeout=40)
            pids = {i: running(folder, i)[0][0] for i in cluster.ids}
            cluster.start(3)
            after = cluster.wait_placed(["m1", "m2", "m3"], timeout=40)
            moved = {i for i in cluster.ids if running(folder, i)[0][0] != pids[i]}
            assert moved == {i for i in cluster.ids if after[i] == "m3"}
            assert all(before[i] == after[i] for i in cluster.ids if i not in moved)
            cluster.ns.cut(1)
            cluster.wait_placed(["m2", "m3"], timeout=TTL * 10)
            cluster.ns.heal(1)
            cluster.wait_placed(["m1", "m2", "m3"], timeout=40)
        assert cluster.doubles() == {}
    finally:
        codes = cluster.close()
    assert codes == {"m1": 0, "m2": 0, "m3": 0}
