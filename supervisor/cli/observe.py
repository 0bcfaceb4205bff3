"""`supervisor logs` and `supervisor events`: reading and following, over the light client.

Both print one line per line or event and end with the stream (the agent removed, the
supervisor stopped) or at Ctrl-C (exit 0). Agents' text is shown, not obeyed: control
characters are printed escaped (``\\x1b``), so a line cannot repaint the terminal.
"""

from __future__ import annotations

import argparse
import json
import time

from supervisor.cli.client import (
    EXIT_OK,
    Answer,
    Api,
    ClientError,
    agent_path,
    fail_unless,
    sse_events,
)
from supervisor.cli.control import connect
from supervisor.escape import escape_text

TYPE_CHECKING = False  # see supervisor/__init__.py
if TYPE_CHECKING:
    from typing import Any


def shown(text: str) -> str:
    """`text` on one line, control characters escaped (docs/operations.md, "Agent text")."""
    return escape_text(text)


def cmd_logs(args: argparse.Namespace) -> int:
    api = connect(args)
    path = agent_path(args.id, "logs") + f"?lines={args.lines}"
    try:
        if not args.follow:
            answer = api.request("GET", path)
            fail_unless(answer, 200)
            for line in answer.json()["lines"]:
                print(_format_line(line), flush=False)
            return EXIT_OK
        _follow(Api(api.address, None), path + "&follow=true")
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def _follow(api: Api, path: str) -> None:
    with api.stream("GET", path, headers={"Accept": "text/event-stream"}) as response:
        if response.status != 200:
            fail_unless(Answer(response.status, dict(response.getheaders()), response.read()), 200)
        for event in sse_events(response):
            data = json.loads(event.data)
            if event.event == "line":
                print(_format_line(data), flush=True)
            elif event.event == "skipped":
                print(f"... {data['lines']} lines skipped (this terminal fell behind)", flush=True)
            elif event.event == "end":
                print(f"... {data['reason']}", flush=True)


def _format_line(line: dict[str, Any]) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(line["ts"]))
    millis = int(line["ts"] * 1000) % 1000
    stream = "" if line["stream"] == "stdout" else f" [{line['stream']}]"
    return f"{stamp}.{millis:03d}{stream} {shown(line['msg'])}"


def cmd_events(args: argparse.Namespace) -> int:
    api = Api(connect(args).address, None)
    try:
        with api.stream("GET", "/events", headers={"Accept": "text/event-stream"}) as response:
            if response.status != 200:
                raise ClientError(f"the supervisor answered {response.status} to /events")
            for event in sse_events(response):
                if args.json:
                    print(
                        json.dumps(
                            {"event": event.event, "id": event.id, "data": json.loads(event.data)}
                        ),
                        flush=True,
                    )
                else:
                    print(_describe(event.event, json.loads(event.data)), flush=True)
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def _describe(kind: str, data: dict[str, Any]) -> str:
    """One readable line for an event."""
    now = time.strftime("%H:%M:%S")
    if kind == "snapshot":
        states: dict[str, int] = {}
        for agent in data["agents"]:
            states[agent["state"]] = states.get(agent["state"], 0) + 1
        summary = ", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "no agents"
        return f"{now} snapshot: {len(data['agents'])} agents ({summary})"
    if kind == "agent":
        pid = f" pid {data['pid']}" if data.get("pid") else ""
        reason = f" ({shown(data['reason'])})" if data.get("reason") else ""
        return f"{now} {data['id']}: {data['state']}{reason}{pid}"
    if kind == "removed":
        return f"{now} {data['id']}: removed"
    if kind == "reload":
        if not data.get("ok"):
            return f"{now} reload refused: " + "; ".join(shown(e) for e in data.get("errors", []))
        counts = ", ".join(f"{len(data[k])} {k}" for k in ("started", "stopped", "restarted"))
        return f"{now} reloaded: {counts}, {len(data['unchanged'])} unchanged"
    if kind == "shutdown":
        return f"{now} shutting down ({shown(data.get('reason', ''))})"
    return f"{now} {kind}: {shown(json.dumps(data))}"
