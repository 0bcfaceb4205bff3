"""Counts how many times a stop signal is delivered to the processes of an agent.

``count_signals.py FOLDER`` is the leader (a shell would do, but this one is exact): it
starts a child in its own process group and one in a session of its own (`setsid`),
then waits. Each of the three catches SIGRTMIN, a real-time signal (the kernel queues
every one sent: none merges with another still pending), and its wake-up fd writes a
byte to ``FOLDER/<who>.count`` for each delivery; each writes ``FOLDER/<who>.ready``
once it is counting, and exits 0.3 s after its first signal.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def count(folder: Path, who: str) -> None:
    fd = os.open(folder / f"{who}.count", os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK, 0o644)
    signal.set_wakeup_fd(fd, warn_on_full_buffer=False)  # a byte per delivery
    got = []
    signal.signal(signal.SIGRTMIN, lambda *_: got.append(time.monotonic()))
    (folder / f"{who}.ready").touch()
    while not got or time.monotonic() - got[0] < 0.3:
        time.sleep(0.01)


def main() -> None:
    folder, who = Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "leader"
    if who == "leader":
        me = [sys.executable, __file__, str(folder)]
        others = [
            subprocess.Popen([*me, "member"]),  # in the leader's group
            subprocess.Popen([*me, "escapee"], start_new_session=True),
        ]
        count(folder, who)
        for other in others:
            other.wait()
    else:
        count(folder, who)


if __name__ == "__main__":
    main()
