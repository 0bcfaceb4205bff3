"""The client commands `status`, `reload`, `start`, `stop`, `restart` (docs/api.md#the-cli-client).

Each is one request to the API through `supervisor.cli.client`; nothing here imports
trio, the manifest model or httpx.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from supervisor.cli.client import (
    EXIT_NOT_READY,
    EXIT_OK,
    EXIT_UNREACHABLE,
    Api,
    agent_path,
    api_address,
    fail_unless,
)
from supervisor.cli.table import FIELDS, format_table
from supervisor.escape import escape_text

TYPE_CHECKING = False  # see supervisor/__init__.py
if TYPE_CHECKING:
    from typing import Any


def connect(args: argparse.Namespace) -> Api:
    """The API the command's `--api` and `--timeout` name."""
    return Api(api_address(args.api), args.timeout)


def cmd_status(args: argparse.Namespace) -> int:
    path = agent_path(args.id) if args.id else "/agents"
    if not args.json:  # the table's columns only: no spec, a fraction of the bytes
        path += f"?fields={FIELDS}"
    answer = connect(args).request("GET", path)
    fail_unless(answer, 200)
    body = answer.json()
    agents: list[dict[str, Any]] = [body] if args.id else body["agents"]
    if args.json:
        print(json.dumps(body, indent=2))
    else:
        print(format_table(agents, now=time.time()))
    return EXIT_OK if all(_ready(a) for a in agents) else EXIT_NOT_READY


def _ready(agent: dict[str, Any]) -> bool:
    """Up (running or exited ok), or not meant to run at all."""
    return bool(agent.get("up")) or agent.get("spec", {}).get("enabled") is False


def cmd_reload(args: argparse.Namespace) -> int:
    answer = connect(args).request("POST", "/reload")
    if answer.status == 422:
        body = answer.json()
        for line in body.get("errors") or [body["error"]]:
            print(line, file=sys.stderr)
        print("reload refused: nothing changed", file=sys.stderr)
        return EXIT_UNREACHABLE
    fail_unless(answer, 200)
    result = answer.json()
    for key in ("started", "stopped", "restarted"):
        print(f"{key}: {', '.join(result[key]) or '-'}")
    unchanged = len(result["unchanged"])
    print(f"unchanged: {unchanged} agent{'s' * (unchanged != 1)}")
    for agent_id, why in result["failed"].items():
        print(f"failed to start: {agent_id}: {escape_text(why)}")
    return EXIT_NOT_READY if result["failed"] else EXIT_OK


def cmd_control(args: argparse.Namespace) -> int:
    answer = connect(args).request("POST", agent_path(args.id, args.command))
    fail_unless(answer, 200)
    agent = answer.json()
    print(_describe(agent))
    if args.command in ("start", "restart") and not agent["up"]:
        return EXIT_NOT_READY
    return EXIT_OK


def _describe(agent: dict[str, Any]) -> str:
    why = agent.get("reason") or ""
    return escape_text(f"{agent['id']}: {agent['state']}{f' ({why})' if why else ''}")
