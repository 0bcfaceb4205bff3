"""The `supervisor` command: its parser, and `main` (docs/operations.md, docs/api.md).

Each command names the function that runs it as ``"module:function"``, imported only
when that command runs: the client commands (`supervisor.cli.control`, over
`supervisor.cli.client`) import neither trio nor the manifest model nor httpx, so they
answer in tens of milliseconds; `run`, `check` and `schema` (`supervisor.cli.local`)
import what they need when called.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from supervisor import __version__
from supervisor.cli.client import DEFAULT_API, ClientError, print_error

COMMANDS = (
    *("run", "check", "schema"),
    *("status", "reload", "start", "stop", "restart", "logs", "events"),
)
CLIENT_EXITS = (
    "2 also when no supervisor answers, or it refuses the request (a missing or wrong "
    "token: $SUPERVISOR_TOKEN), or it is shutting down."
)

TYPE_CHECKING = False  # see supervisor/__init__.py
if TYPE_CHECKING:
    from typing import Any


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or with `only` of that one alone (`main`: so that
    ``supervisor status`` does not build the ten other commands' parsers, 2-3 ms)."""

    def wanted(name: str) -> bool:
        return only is None or only == name

    parser = argparse.ArgumentParser(
        prog="supervisor",
        description="A trio-native supervisor for long-running agents.",
        epilog="Run `supervisor COMMAND --help` for a command's options and exit codes.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"supervisor {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    if wanted("run"):
        p = _command(
            sub,
            "run",
            "run the agents of a manifest in the foreground",
            "exit codes: 0 stopped by SIGTERM or SIGINT; 2 the manifest is invalid, or the API "
            "cannot be served (bad address, address in use, unusable token file): nothing "
            "started; 3 a critical agent failed (everything else was stopped first).",
            "supervisor.cli.local:cmd_run",
        )
        _manifest_argument(p)
        p.add_argument(
            "--api",
            default=None,
            help='API address: "HOST:PORT", "unix:/path", or "" for none '
            f"(default: the manifest's [supervisor] api, else {DEFAULT_API})",
        )
        p.add_argument(
            "--watch", action="store_true", help="reload when the manifest's folder changes"
        )
        p.add_argument(
            "--cluster",
            default=None,
            help='share the manifest with other supervisors: "etcd://HOST:PORT[,HOST:PORT...]"',
        )
        p.add_argument(
            "--member",
            default=None,
            help="this supervisor's name in the cluster (default: host name)",
        )
        for flag, meaning in (
            ("--etcd-ca", "CA certificate etcd's must be signed by (TLS)"),
            ("--etcd-cert", "client certificate to present to etcd (TLS, with --etcd-key)"),
            ("--etcd-key", "private key of --etcd-cert"),
            ("--etcd-user", "etcd user to authenticate as (with --etcd-password-file)"),
            ("--etcd-password-file", "file holding the etcd user's password"),
        ):
            p.add_argument(flag, default=None, help=meaning + "; overrides the manifest")
        p.add_argument(
            "--log-format",
            choices=["text", "json"],
            default="text",
            help="text: one readable line per event (default); json: one JSON object per line",
        )
        p.add_argument(
            "--log-level",
            default="INFO",
            type=str.upper,
            choices=["DEBUG", "INFO", "WARNING", "ERROR"],
            help="the least severe messages shown (default: INFO; any case)",
        )

    if wanted("check"):
        p = _command(
            sub,
            "check",
            "validate a manifest",
            "exit codes: 0 valid; 2 invalid (every error goes to stderr, located).",
            "supervisor.cli.local:cmd_check",
        )
        _manifest_argument(p)

    if wanted("schema"):
        _command(
            sub,
            "schema",
            "print the manifest's JSON Schema",
            "exit codes: 0 printed.",
            "supervisor.cli.local:cmd_schema",
        )

    if wanted("status"):
        p = _client_command(
            sub,
            "status",
            "show the agents of a running supervisor",
            "exit codes: 0 every enabled agent (or ID) is running or exited ok; 1 an agent is "
            f"not, or there is no agent ID; {CLIENT_EXITS}",
            "supervisor.cli.control:cmd_status",
            timeout=10.0,
        )
        p.add_argument("id", nargs="?", help="only this agent")
        p.add_argument("--json", action="store_true", help="print the API's AGENT objects")

    if wanted("reload"):
        _client_command(
            sub,
            "reload",
            "reconcile with the manifest file now",
            "exit codes: 0 reloaded; 1 reloaded, but an agent failed to start; 2 the manifest is "
            f"invalid (nothing changed); {CLIENT_EXITS}",
            "supervisor.cli.control:cmd_reload",
        )

    for action in ("start", "stop", "restart"):
        if not wanted(action):
            continue
        done = "has stopped" if action == "stop" else "is running"
        p = _client_command(
            sub,
            action,
            f"{action} one agent",
            f"exit codes: 0 the agent {done}; 1 there is no agent ID"
            f"{'' if action == 'stop' else ', or its start failed'}; {CLIENT_EXITS}",
            "supervisor.cli.control:cmd_control",
        )
        p.add_argument("id", help="the agent's id")

    if wanted("logs"):
        p = _client_command(
            sub,
            "logs",
            "print an agent's recent output; -f follows it",
            "exit codes: 0 printed (with -f: the agent was removed, the supervisor stopped, or "
            f"Ctrl-C); 1 there is no agent ID; {CLIENT_EXITS}",
            "supervisor.cli.observe:cmd_logs",
            timeout=10.0,
        )
        p.add_argument("id", help="the agent's id")
        p.add_argument(
            "-n", "--lines", type=_lines, default=100, help="how many recent lines (default: 100)"
        )
        p.add_argument(
            "-f", "--follow", action="store_true", help="then print new lines as they come"
        )

    if wanted("events"):
        p = _client_command(
            sub,
            "events",
            "print the supervisor's events as they happen, until Ctrl-C",
            f"exit codes: 0 the stream ended (the supervisor stopped) or Ctrl-C; {CLIENT_EXITS}",
            "supervisor.cli.observe:cmd_events",
            timeout=10.0,
        )
        p.add_argument("--json", action="store_true", help="one JSON object per event")
    return parser


class _Formatter(argparse.HelpFormatter):
    """argparse's own, with the terminal's width found once: argparse makes a formatter
    for every argument added, and each asked `shutil` (whose import loads zlib, bz2 and
    lzma: 3 ms of every command) for the terminal size."""

    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
    ) -> None:
        super().__init__(prog, indent_increment, max_help_position, width or _help_width())


_WIDTH: list[int] = []


def _help_width() -> int:
    """`shutil.get_terminal_size`'s columns, less 2, as argparse's default."""
    if not _WIDTH:
        columns = int(os.environ["COLUMNS"]) if os.environ.get("COLUMNS", "").isdigit() else 0
        if columns <= 0:
            try:
                columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
            except (AttributeError, ValueError, OSError):
                columns = 0
        _WIDTH.append((columns or 80) - 2)
    return _WIDTH[0]


def _lines(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"must be a whole number from 0 up, not {text!r}")
    return int(text)


def _command(sub: Any, name: str, help_text: str, exits: str, run: str) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        name, help=help_text, description=help_text, epilog=exits, formatter_class=_Formatter
    )
    p.set_defaults(run=run)
    return p


def _manifest_argument(p: argparse.ArgumentParser) -> None:
    from supervisor.cli.local import DEFAULT_MANIFEST  # (pathlib: not for client commands)

    p.add_argument(
        "manifest",
        nargs="?",
        help=f"manifest file (default: $SUPERVISOR_MANIFEST, then {DEFAULT_MANIFEST})",
    )


def _client_command(
    sub: Any, name: str, help_text: str, exits: str, run: str, timeout: float = 120.0
) -> argparse.ArgumentParser:
    """A command that talks to a running supervisor: with `--api` and `--timeout`."""
    p = _command(sub, name, help_text, exits, run)
    p.add_argument(
        "--api",
        default=None,
        help=f'the API: "HOST:PORT" or "unix:/path" (default: $SUPERVISOR_API, then '
        f"{DEFAULT_API}). The token is $SUPERVISOR_TOKEN, else the one the supervisor "
        "made for its own user",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=timeout,
        help=f"seconds to wait for the answer (default: {timeout:g})",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = argv[0] if argv and argv[0] in COMMANDS else None
    args = build_parser(command).parse_args(argv)
    module, _, function = args.run.partition(":")
    run = getattr(importlib.import_module(module), function)
    try:
        code: int = run(args)
    except ClientError as exc:
        return print_error(exc)
    except BrokenPipeError:
        return _reader_left()
    try:
        sys.stdout.flush()  # here, so that a reader gone away is seen while we can handle it
    except BrokenPipeError:
        return _reader_left()
    return code


def _reader_left() -> int:
    """`supervisor status | head`: the reader has what it wanted. Point stdout at
    /dev/null so the interpreter's final flush does not fail again."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
