"""The least a supervisor can do: spawn each `sleep ARG`, respawn it when it dies, stop on TERM.

The benchmark runs this as the "minimal" peer, a floor for start, crash -> running, shutdown,
memory and idle CPU: whatever a real supervisor adds on top is its own cost. No API, no
logging, no reload; one blocking ``os.wait()`` loop.

Usage: ``python -I -S respawn.py ARGS_FILE`` (one sleep argument per line).
"""

import os
import signal
import sys

SLEEP = "/usr/bin/sleep" if os.path.exists("/usr/bin/sleep") else "/bin/sleep"


def spawn(arg: str) -> int:
    return os.posix_spawn(SLEEP, ["sleep", arg], os.environ, setpgroup=0)


def stop(signum: int, frame: object) -> None:
    raise SystemExit(0)


def main() -> None:
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    with open(sys.argv[1]) as f:
        args = f.read().split()
    children = {}
    try:
        for arg in args:
            children[spawn(arg)] = arg
        while True:
            pid, _ = os.wait()
            arg = children.pop(pid, None)
            if arg is not None:
                children[spawn(arg)] = arg
    finally:
        for pid in children:
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for pid in children:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass


if __name__ == "__main__":
    main()
