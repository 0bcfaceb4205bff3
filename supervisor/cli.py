"""The `supervisor` command (SPEC §5)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from supervisor import manifest

DEFAULT_MANIFEST = "config/agents.toml"


def _manifest_path(arg: str | None) -> Path:
    return Path(arg or os.environ.get("SUPERVISOR_MANIFEST") or DEFAULT_MANIFEST)


def cmd_check(args: argparse.Namespace) -> int:
    path = _manifest_path(args.manifest)
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
    print(json.dumps(manifest.json_schema(), indent=2))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from supervisor.supervisor import run_main

    return run_main(
        _manifest_path(args.manifest),
        api=args.api,
        watch=args.watch,
        log_format=args.log_format,
        log_level=args.log_level,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="supervisor", description="A trio-native supervisor for long-running agents."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run the agents of a manifest in the foreground")
    p.add_argument(
        "manifest",
        nargs="?",
        help=f"manifest file (default: $SUPERVISOR_MANIFEST, then {DEFAULT_MANIFEST})",
    )
    p.add_argument(
        "--api", default=None, help='API address: "HOST:PORT", "unix:/path", or "" for none'
    )
    p.add_argument("--watch", action="store_true", help="reload when the manifest's folder changes")
    p.add_argument("--log-format", choices=["text", "json"], default="text")
    p.add_argument(
        "--log-level", default="INFO", type=str.upper, choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check", help="validate a manifest")
    p.add_argument("manifest", nargs="?")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("schema", help="print the manifest's JSON Schema")
    p.set_defaults(func=cmd_schema)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code
