"""Cluster members in network namespaces, against a real etcd, watched by a kernel lock.

`Namespaces` makes a hub namespace for etcd and one namespace per member, each joined to
the hub by a veth pair (hub side 10.231.N.1, member side 10.231.N.2): every address lives
inside namespaces this harness made, nothing of the host's network changes, and `close()`
deletes them all (a namespace's veth ends go with it). `cut(n)` takes member n's link
down in the hub: its packets to etcd are dropped, as in a partition; `heal(n)` brings it
back. Whatever a test leaves running in a namespace is SIGKILLed when it is deleted.

The witness agent (`witness_command`) takes an exclusive ``flock`` on its agent's file in
a folder shared by every member, then logs its start ("PID start TIME MEMBER") and its
stop ("PID stop MEMBER"): a second copy of the agent, on any member, finds the lock taken
and records a *double* (``ID.doubles``). The kernel does the catching, not a sampler.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from .harness import alive, lines

IP = shutil.which("ip")
FLOCK = shutil.which("flock")
_tags = itertools.count()


def _can_make_namespaces() -> bool:
    if IP is None or FLOCK is None or os.geteuid() != 0:
        return False
    probe = f"svprobe{os.getpid()}"
    made = subprocess.run([IP, "netns", "add", probe], capture_output=True, check=False)
    subprocess.run([IP, "netns", "del", probe], capture_output=True, check=False)
    return made.returncode == 0


needs_netns = pytest.mark.skipif(
    not _can_make_namespaces(),
    reason="needs root, ip (iproute2) and flock, and the right to make network namespaces",
)

HOLD = """\
# hold.sh DIR ID: the witness's body, run under its agent's lock. The stop line forks
# nothing: a stop ends every process of the run, a `date` in the trap included.
echo "$$ start $(date +%s.%N) ${SV_MEMBER:-?}" >> "$1/$2.log"
trap 'echo "$$ stop ${SV_MEMBER:-?}" >> "$1/$2.log"; exit 0' TERM
sleep 100000 &
wait
"""

WITNESS = """\
# witness.sh DIR ID: a second copy of ID anywhere finds the lock held: a double.
flock -n -E 75 "$1/$2.lock" sh "$1/hold.sh" "$1" "$2"
rc=$?
if [ "$rc" -eq 75 ]; then echo "double $$ $PPID $(date +%s.%N)" >> "$1/$2.doubles"; fi
exit "$rc"
"""


def install_witness(folder: Path) -> None:
    (folder / "hold.sh").write_text(HOLD)
    (folder / "witness.sh").write_text(WITNESS)


def witness_command(folder: Path, agent_id: str) -> list[str]:
    return ["sh", str(folder / "witness.sh"), str(folder), agent_id]


def doubles(folder: Path, ids: list[str]) -> dict[str, list[str]]:
    """{id: its double lines} for the agents of `ids` a second copy of which was caught."""
    found = {i: lines(folder / f"{i}.doubles") for i in ids}
    return {i: found_lines for i, found_lines in found.items() if found_lines}


def running(folder: Path, agent_id: str) -> list[tuple[int, str]]:
    """[(pid, member)] of the copies of `agent_id` alive now (from their start lines; the
    member is $SV_MEMBER of the supervisor that started it)."""
    live: dict[int, str] = {}
    for line in lines(folder / f"{agent_id}.log"):
        fields = line.split()  # PID start [TIME] MEMBER, or PID stop MEMBER
        if len(fields) < 3:
            continue  # cut short by a kill
        pid, what, member = fields[0], fields[1], fields[-1]
        if what == "start":
            live[int(pid)] = member
        else:
            live.pop(int(pid), None)
    return [(pid, member) for pid, member in live.items() if alive(pid)]


class Namespaces:
    """A hub namespace and `members` member namespaces (see the module's docstring)."""

    def __init__(self, members: int) -> None:
        assert IP is not None
        sweep_stale()
        tag = f"sv{os.getpid()}x{next(_tags)}"
        self.hub = f"{tag}-hub"
        self.names = [f"{tag}-m{n}" for n in range(1, members + 1)]
        self._made: list[str] = []
        try:
            self._ip("netns", "add", self.hub)
            self._made.append(self.hub)
            self._ip("-n", self.hub, "link", "set", "lo", "up")
            for n, ns in enumerate(self.names, start=1):
                self._ip("netns", "add", ns)
                self._made.append(ns)
                self._ip("-n", ns, "link", "set", "lo", "up")
                hub_end, member_end = self.links(n)
                self._ip("-n", self.hub, "link", "add", hub_end, "type", "veth", "peer",
                         "name", member_end, "netns", ns)  # fmt: skip
                self._ip("-n", self.hub, "addr", "add", f"{self.hub_address(n)}/24", "dev", hub_end)
                self._ip("-n", ns, "addr", "add", f"10.231.{n}.2/24", "dev", member_end)
                self._ip("-n", self.hub, "link", "set", hub_end, "up")
                self._ip("-n", ns, "link", "set", member_end, "up")
        except BaseException:
            self.close()
            raise

    @staticmethod
    def links(n: int) -> tuple[str, str]:
        return f"svh{n}", f"svm{n}"

    @staticmethod
    def hub_address(n: int) -> str:
        """Where member n reaches etcd."""
        return f"10.231.{n}.1"

    def prefix(self, n: int) -> list[str]:
        """The command prefix that runs a command in member n's namespace."""
        assert IP is not None
        return [IP, "netns", "exec", self.names[n - 1]]

    def cut(self, n: int) -> None:
        self._ip("-n", self.hub, "link", "set", self.links(n)[0], "down")

    def heal(self, n: int) -> None:
        self._ip("-n", self.hub, "link", "set", self.links(n)[0], "up")

    def close(self) -> None:
        """Kill whatever still runs in the namespaces, then delete them (their veth ends
        go with them). Safe to call again; never raises."""
        for ns in reversed(self._made):
            kill_all_in(ns)
            subprocess.run([IP or "ip", "netns", "del", ns], capture_output=True, check=False)
        self._made.clear()

    def _ip(self, *args: str) -> None:
        assert IP is not None
        subprocess.run([IP, *args], check=True, capture_output=True)


def sweep_stale() -> None:
    """Delete the namespaces (and kill what runs in them) of test runs that are gone:
    a pytest killed outside its fixtures (SIGKILL, a CI timeout) cleans up nothing, so the
    next run does. Names carry the pid of the run that made them."""
    listed = subprocess.run([IP or "ip", "netns", "list"], capture_output=True, text=True)
    for line in listed.stdout.splitlines():
        found = re.fullmatch(r"sv(\d+)x\d+-(hub|m\d+)", line.split(" ")[0])
        if found and not alive(int(found[1])):
            kill_all_in(found[0])
            subprocess.run([IP or "ip", "netns", "del", found[0]], capture_output=True)


def kill_all_in(ns: str) -> None:
    """SIGKILL every process in network namespace `ns` (a member, etcd, an agent a test
    left behind), so that deleting it really ends it: `ip netns del` only drops its name,
    and a namespace with a process in it lives on, veth and addresses included."""
    found = subprocess.run(
        [IP or "ip", "netns", "pids", ns], capture_output=True, text=True, check=False
    )
    for pid in found.stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


class CpuLoad:
    """Busy processes, one per core, for at most `limit` seconds (they end by themselves
    even if the test dies: ``timeout`` kills them)."""

    def __init__(self, limit: float, cores: int | None = None) -> None:
        count = cores or os.cpu_count() or 2
        spin = "while :; do :; done"
        self.procs = [
            # timeout leads a process group of its own: killpg ends it and its child.
            subprocess.Popen(["timeout", "-s", "KILL", str(limit), "sh", "-c", spin])
            for _ in range(count)
        ]

    def close(self) -> None:
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()

    def __enter__(self) -> CpuLoad:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
