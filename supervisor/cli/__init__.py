"""The `supervisor` command (SPEC §5)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from supervisor import manifest

if TYPE_CHECKING:
    import httpx

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
    from supervisor.run import run_main

    return run_main(
        _manifest_path(args.manifest),
        api=args.api,
        watch=args.watch,
        log_format=args.log_format,
        log_level=args.log_level,
        cluster=args.cluster,
        member=args.member,
    )


# -- client commands: a thin client of the HTTP API (SPEC §5) ---------------------

EXIT_OK, EXIT_NOT_READY, EXIT_UNREACHABLE = 0, 1, 2


class ClientError(Exception):
    """The command cannot do its job; `code` is the exit code, the message says why."""

    def __init__(self, message: str, code: int = EXIT_UNREACHABLE) -> None:
        super().__init__(message)
        self.code = code


def _api_address(arg: str | None) -> str:
    return arg or os.environ.get("SUPERVISOR_API") or manifest.DEFAULT_API


def _open_client(address: str, timeout: float) -> httpx.Client:
    """An httpx client for the API at `address` ("HOST:PORT" or "unix:/path")."""
    import httpx  # here, not at the top: `supervisor run` needs none of its 60 ms import

    token = os.environ.get("SUPERVISOR_TOKEN", "").strip()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if address.startswith("unix:"):
        transport = httpx.HTTPTransport(uds=address[len("unix:") :])
        return httpx.Client(
            base_url="http://supervisor", transport=transport, headers=headers, timeout=timeout
        )
    return httpx.Client(base_url=f"http://{address}", headers=headers, timeout=timeout)


def _request(args: argparse.Namespace, method: str, path: str) -> httpx.Response:
    """Send one request; raise ClientError if no supervisor answers or it refuses."""
    import httpx

    address = _api_address(args.api)
    try:
        with _open_client(address, args.timeout) as client:
            response = client.request(method, path)
    except httpx.TimeoutException:
        raise ClientError(f"the supervisor at {address} did not answer within {args.timeout:g}s")
    except httpx.HTTPError as exc:
        raise ClientError(
            f"cannot reach a supervisor at {address}: {exc or type(exc).__name__}\n"
            "is `supervisor run` running? Point to it with --api or $SUPERVISOR_API."
        )
    if response.status_code in (401, 403, 503):
        raise ClientError(f"the supervisor at {address} refused: {_error_text(response)}")
    return response


def _error_text(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}: {response.text.strip()[:200]}"


def _fail_unless(response: httpx.Response, *ok: int) -> None:
    """Raise ClientError (exit 1 for 404, else 2) unless the status is one of `ok`."""
    if response.status_code not in ok:
        code = EXIT_NOT_READY if response.status_code == 404 else EXIT_UNREACHABLE
        raise ClientError(_error_text(response), code)


def _client_command(run: Callable[[argparse.Namespace], int]) -> Callable[..., int]:
    """Print a ClientError's message (no traceback) and turn it into its exit code."""

    def command(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except ClientError as exc:
            print(f"supervisor: {exc}", file=sys.stderr)
            return exc.code
        except BrokenPipeError:
            # `supervisor status | head`: the reader has what it wanted. Point stdout
            # at /dev/null so the interpreter's final flush does not fail again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_OK

    return command


@_client_command
def cmd_status(args: argparse.Namespace) -> int:
    path = f"/agents/{args.id}" if args.id else "/agents"
    response = _request(args, "GET", path)
    _fail_unless(response, 200)
    body = response.json()
    agents: list[dict[str, Any]] = [body] if args.id else body["agents"]
    if args.json:
        print(json.dumps(body, indent=2))
    else:
        print(format_table(agents, now=time.time()))
    return EXIT_OK if all(_ready(a) for a in agents) else EXIT_NOT_READY


def _ready(agent: dict[str, Any]) -> bool:
    """Up (running or exited ok), or not meant to run at all."""
    return bool(agent.get("up")) or agent.get("spec", {}).get("enabled") is False


@_client_command
def cmd_reload(args: argparse.Namespace) -> int:
    response = _request(args, "POST", "/reload")
    if response.status_code == 422:
        body = response.json()
        for line in body.get("errors") or [body["error"]]:
            print(line, file=sys.stderr)
        print("reload refused: nothing changed", file=sys.stderr)
        return EXIT_UNREACHABLE
    _fail_unless(response, 200)
    result = response.json()
    for key in ("started", "stopped", "restarted"):
        print(f"{key}: {', '.join(result[key]) or '-'}")
    unchanged = len(result["unchanged"])
    print(f"unchanged: {unchanged} agent{'s' * (unchanged != 1)}")
    for agent_id, why in result["failed"].items():
        print(f"failed to start: {agent_id}: {why}")
    return EXIT_NOT_READY if result["failed"] else EXIT_OK


@_client_command
def cmd_control(args: argparse.Namespace) -> int:
    response = _request(args, "POST", f"/agents/{args.id}/{args.command}")
    _fail_unless(response, 200)
    agent = response.json()
    print(_describe(agent))
    if args.command in ("start", "restart") and not agent["up"]:
        return EXIT_NOT_READY
    return EXIT_OK


def _describe(agent: dict[str, Any]) -> str:
    why = agent.get("reason") or ""
    return f"{agent['id']}: {agent['state']}{f' ({why})' if why else ''}"


# -- the status table -------------------------------------------------------------

_COLUMNS = ("ID", "KIND", "STATE", "PID", "RESTARTS", "UPTIME", "LAST EXIT", "NOTE")


def format_table(agents: list[dict[str, Any]], *, now: float) -> str:
    """The agents as an aligned text table; `now` is the wall time uptimes end at."""
    rows = [_COLUMNS, *(_row(a, now) for a in agents)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS) - 1)]
    return "\n".join(
        "  ".join(
            [*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[-1]]
        ).rstrip()
        for row in rows
    )


def _row(agent: dict[str, Any], now: float) -> tuple[str, ...]:
    running = agent["state"] == "running"
    return (
        agent["id"],
        agent["kind"],
        agent["state"] if agent.get("spec", {}).get("enabled", True) else "disabled",
        "-" if agent["pid"] is None else str(agent["pid"]),
        str(agent["restarts"]),
        format_duration(now - agent["since"]) if running else "-",
        _last_exit(agent["last_exit"], now),
        (agent.get("status") if running else agent.get("reason")) or "",
    )


def _last_exit(last: dict[str, Any] | None, now: float) -> str:
    if last is None:
        return "-"
    if "error" in last:
        how = last["error"] if len(last["error"]) <= 40 else last["error"][:39] + "…"
    elif "signal" in last:
        how = str(last["signal"])
    else:
        how = f"code {last.get('code')}"
    return f"{how}, {format_duration(now - last['at'])} ago"


def format_duration(seconds: float) -> str:
    """``42s``, ``3m07s``, ``2h05m``, ``3d04h``: two units at most, like `ps`."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


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
    p.add_argument(
        "--cluster",
        default=None,
        help='share the manifest with other supervisors: "etcd://HOST:PORT[,HOST:PORT...]"',
    )
    p.add_argument(
        "--member", default=None, help="this supervisor's name in the cluster (default: host name)"
    )
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

    p = _client_parser(
        sub,
        "status",
        "show the agents of a running supervisor",
        "exit: 0 every enabled agent running or exited ok; 1 any not, or no agent ID; "
        "2 no supervisor reachable",
        timeout=10.0,
    )
    p.add_argument("id", nargs="?", help="only this agent")
    p.add_argument("--json", action="store_true", help="print the API's AGENT objects")
    p.set_defaults(func=cmd_status)

    p = _client_parser(
        sub,
        "reload",
        "reconcile with the manifest file now",
        "exit: 0 reloaded; 1 reloaded, but an agent failed to start; 2 invalid manifest "
        "(nothing changed), or no supervisor reachable",
    )
    p.set_defaults(func=cmd_reload)

    for action in ("start", "stop", "restart"):
        p = _client_parser(
            sub,
            action,
            f"{action} one agent",
            "exit: 0 done; 1 no agent ID, or it failed to start; 2 no supervisor reachable",
        )
        p.add_argument("id", help="the agent's id")
        p.set_defaults(func=cmd_control)
    return parser


def _client_parser(
    sub: Any, name: str, help_text: str, exits: str, timeout: float = 120.0
) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(name, help=help_text, epilog=exits)
    p.add_argument(
        "--api",
        default=None,
        help=f'the API: "HOST:PORT" or "unix:/path" (default: $SUPERVISOR_API, then '
        f"{manifest.DEFAULT_API}); the token comes from $SUPERVISOR_TOKEN",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=timeout,
        help=f"seconds to wait for the answer (default: {timeout:g})",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code
