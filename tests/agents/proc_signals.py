"""A process agent for the process runner's tests.

It says ``STATUS=armed`` and ``READY=1`` on ``$NOTIFY_SOCKET`` once its signal handlers
are in place, prints ``stopped by SIG…`` when SIGTERM or SIGINT arrives, and exits 0.
With the argument ``ignore-term`` it ignores SIGTERM instead (to test the escalation to
SIGKILL).
"""

import os
import signal
import socket
import sys


def notify(message: str) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(message.encode(), os.environ["NOTIFY_SOCKET"])


def on_signal(signum: int, _frame: object) -> None:
    print(f"stopped by {signal.Signals(signum).name}", flush=True)
    sys.exit(0)


def main() -> None:
    signal.signal(signal.SIGINT, on_signal)
    if sys.argv[1:] == ["ignore-term"]:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, on_signal)
    notify("STATUS=armed")
    notify("READY=1")
    while True:
        signal.pause()


if __name__ == "__main__":
    main()
