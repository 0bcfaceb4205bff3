"""Test agent: starts processes that leave its process group, and records their pids.

    escape.py MODE PIDFILE [then]

MODE: "daemon" (the classic double fork: fork, setsid, fork, the middle one exits),
"setsid" (a child in a session of its own), "deep" (three levels, each one forking the
next into a session of its own). Each escaped process appends its pid to PIDFILE and
sleeps. THEN: "stay" (default: the agent sleeps too) or "exit" (it exits 0 once they
have all recorded themselves).
"""

from __future__ import annotations

import os
import signal
import sys
import time

ESCAPED = {"daemon": 1, "setsid": 1, "deep": 3}  # processes each mode leaves its group with


def record(pidfile: str) -> None:
    with open(pidfile, "a") as f:
        f.write(f"{os.getpid()}\n")


def recorded(pidfile: str) -> list[str]:
    try:
        with open(pidfile) as f:
            return f.read().split()
    except FileNotFoundError:
        return []


def idle() -> None:
    while True:
        signal.pause()


def main(mode: str, pidfile: str, then: str = "stay") -> None:
    if mode == "daemon":
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                record(pidfile)
                idle()
            os._exit(0)
        os.wait()
    elif mode == "setsid":
        if os.fork() == 0:
            os.setsid()
            record(pidfile)
            idle()
    elif mode == "deep":
        for _level in range(3):
            if os.fork() != 0:
                break  # this level stays
            os.setsid()
            record(pidfile)
        else:
            idle()  # the third level
        if _level:
            idle()  # levels one and two
    if then == "exit":
        # Not before every escaped process has recorded itself (the test reads them).
        while len(recorded(pidfile)) < ESCAPED[mode]:
            time.sleep(0.01)
        sys.exit(0)
    idle()


if __name__ == "__main__":
    main(*sys.argv[1:])
