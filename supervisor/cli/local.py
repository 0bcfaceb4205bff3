"""The commands that work on a manifest here, with no running supervisor: `run`, `check`,
`schema` (docs/manifest.md, docs/operations.md). They import the manifest model, and
`run` the whole supervisor, only when called."""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from pathlib import Path

DEFAULT_MANIFEST = "config/agents.toml"


def manifest_path(arg: str | None) -> Path:
    return Path(arg or os.environ.get("SUPERVISOR_MANIFEST") or DEFAULT_MANIFEST)


def cmd_check(args: argparse.Namespace) -> int:
    from supervisor import manifest

    path = manifest_path(args.manifest)
    try:
        m = manifest.load(path)
    except manifest.ManifestError as e:
        for line in e.errors:
            print(line, file=sys.stderr)
        print(
            f"{path}: invalid ({len(e.errors)} error{'s' * (len(e.errors) != 1)})", file=sys.stderr
        )
        return 2
    kinds: dict[str, int] = {}
    for spec in m.agents.values():
        kinds[spec.kind] = kinds.get(spec.kind, 0) + 1
    summary = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) or "no agents"
    count = len(m.agents)
    print(f"{path}: ok, {count} agent{'s' * (count != 1)} ({summary})")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from supervisor import manifest

    print(json.dumps(manifest.json_schema(), indent=2))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    # No cyclic garbage collection until the first agents are spawned (`supervisor.run`
    # turns it back on then): importing the supervisor and reading the manifest made ~70
    # collections that found next to nothing, ~15 ms of the start (docs/performance.md).
    gc.disable()
    from supervisor.run import run_main

    code = run_main(
        manifest_path(args.manifest),
        api=args.api,
        watch=args.watch,
        log_format=args.log_format,
        log_level=args.log_level,
        cluster=args.cluster,
        member=args.member,
        etcd_access={
            key: value
            for key in ("etcd_ca", "etcd_cert", "etcd_key", "etcd_user", "etcd_password_file")
            if (value := getattr(args, key, None)) is not None
        },
    )
    _exit_now(code)
    return code  # not reached


def _exit_now(code: int) -> None:
    """End the process once `run` is done: its agents are gone and its logs flushed.
    The interpreter's own teardown (a last garbage collection over every object of
    every agent: ~0.2 s of a shutdown of 500 process agents, docs/performance.md) has
    nothing left to do. The atexit handlers (the notify sockets' folder) still run."""
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass  # a reader gone away: nothing to tell it
    os._exit(code)
