"""A process agent: prints a line every few seconds until it is told to stop."""

import argparse
import os
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--every", type=float, default=3.0)
    every = parser.parse_args().every
    prefix = os.environ.get("TICKER_PREFIX", "tick")
    n = 0
    try:
        while True:
            n += 1
            print(f"{prefix} {n} (pid {os.getpid()})", flush=True)
            time.sleep(every)
    except KeyboardInterrupt:  # the manifest's stop_signal is SIGINT
        print(f"stopped after {n} ticks", flush=True)
        return 0


if __name__ == "__main__":
    sys.exit(main())
