"""The control API's OpenAPI 3.1 document, as data: ``GET /openapi.json`` serves `OPENAPI`.

It describes what `supervisor.api.app` answers (docs/api.md); tests check the two agree, route by
route and against a schemathesis run. The small builders below only keep the repeated
parts (a JSON body, a reference, the error answers) from drowning the routes.
"""

from __future__ import annotations

from typing import Any

from supervisor import manifest as mf
from supervisor.api.agent import FIELDS
from supervisor.api.openapi_observe import OBSERVE_PATHS, OBSERVE_SCHEMAS

# prometheus-client's text format (its CONTENT_TYPE_PLAIN_0_0_4), without importing it
METRICS_MEDIA_TYPE = "text/plain"


def _body(schema: dict[str, Any], media: str = "application/json") -> dict[str, Any]:
    return {"content": {media: {"schema": schema}}}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _answers(ok: tuple[str, str, str], *errors: int) -> dict[str, Any]:
    """Responses: the success (code, description, schema name), then error codes."""
    code, description, schema = ok
    return {code: {"description": description, **_body(_ref(schema))}, **_errors(*errors)}


def _errors(*errors: int) -> dict[str, Any]:
    return {
        str(status): {"description": _ERROR_TEXT[status], **_body(_ref("Error"))}
        for status in errors
    }


_ERROR_TEXT = {
    400: "the body is not valid JSON",
    401: "a token is set and the request has no Authorization: Bearer header",
    403: "wrong token, or no token set and the API is not on loopback or a unix socket",
    404: "no agent has that id",
    409: "the id exists or is loading (POST), or is declared in the manifest (DELETE)",
    413: "the body is larger than 1 MiB",
    422: "invalid agent keys or manifest (located messages in `errors`), failed to start, "
    "or the state file could not be written (e.g. a full disk): nothing changed",
    503: "the supervisor is shutting down",
}
_CHANGE = (401, 403, 503)  # what any route that changes something may answer
_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": mf.ID_PATTERN},
}
_BEARER: list[dict[str, list[str]]] = [{"bearer": []}]
_STRINGS = {"type": "array", "items": {"type": "string"}}


_FIELDS = {
    "name": "fields",
    "in": "query",
    "description": "only these keys of each AGENT (spec.KEY: that key of its spec); the "
    "others are not computed (docs/api.md#get-agents)",
    "style": "form",
    "explode": False,
    "schema": {"type": "array", "items": {"enum": list(FIELDS)}, "minItems": 1},
}


def _read(ok: tuple[str, str, str], *errors: int) -> dict[str, Any]:
    """Responses of a read of agents that takes ``?fields=``: its answer is the schema
    `ok[2]`, or with fields ``{ok[2]}Fields``; then 400 (a bad field), then `errors`."""
    code, description, schema = ok
    return {
        code: {
            "description": f"{description} (with fields: only those keys)",
            **_body({"anyOf": [_ref(schema), _ref(schema + "Fields")]}),
        },
        "400": {
            "description": "fields names no field of an agent (the message lists them)",
            **_body(_ref("Error")),
        },
        **_errors(*errors),
    }


def _control(action: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": f"{action} an agent; answers once done (a start: once running or failed)",
            "operationId": f"{action}Agent",
            "parameters": [_ID],
            "security": _BEARER,
            "responses": _answers(("200", "the agent after the request", "Agent"), 404, *_CHANGE),
        }
    }


_AGENT_SCHEMA = {
    "type": "object",
    "required": [
        "id",
        "kind",
        "source",
        "state",
        "pid",
        "restarts",
        "since",
        "last_exit",
        "spec",
    ],
    "properties": {
        "id": {"type": "string"},
        "kind": {"enum": ["in-process", "process"]},
        "source": {"enum": ["manifest", "api"]},
        "state": {
            "enum": ["starting", "running", "backoff", "stopping", "stopped", "exited", "failed"]
        },
        "pid": {"type": ["integer", "null"]},
        "restarts": {"type": "integer", "minimum": 0},
        "since": {"type": "number", "description": "wall time of the last state change"},
        "last_exit": {"oneOf": [_ref("Exit"), {"type": "null"}]},
        "spec": {"type": "object", "description": "the agent's keys, as in the manifest"},
        "up": {"type": "boolean", "description": "running, or exited ok"},
        "status": {"type": "string", "description": "the agent's own one-line status"},
        "reason": {"type": "string", "description": "why it is in this state"},
        "blocked": {
            "type": ["number", "null"],
            "description": "seconds the agent held the event loop in too long steps"
            " (in-process only)",
        },
        "cpu": {
            "type": ["number", "null"],
            "description": "percent of one core since the previous reading of this agent (the"
            " first: since its run started); processes: the whole process set, in-process:"
            " the time its tasks held the loop; null when not running (docs/api.md)",
        },
        "rss": {
            "type": ["integer", "null"],
            "description": "bytes of memory of the agent's processes; null for in-process"
            " agents and when not running",
        },
        "health": {
            "type": ["object", "null"],
            "description": "with a probe or a watchdog: the last check and why health last"
            " ended a run (docs/agents.md, Health)",
            "properties": {
                "probe": {"enum": ["ready", "liveness", None]},
                "result": {"type": ["string", "null"], "description": '"ok", or what failed'},
                "checked_at": {"type": ["number", "null"]},
                "failures_in_a_row": {"type": "integer", "minimum": 0},
                "watchdog": {"type": ["number", "null"]},
                "last_heartbeat": {"type": ["number", "null"]},
                "ended_run": {"type": ["string", "null"]},
            },
        },
    },
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "supervisor control API",
        "version": "1",
        "description": "Load, inspect and control the agents of a running supervisor.",
    },
    "paths": {
        "/agents": {
            "get": {
                "summary": "every agent",
                "operationId": "listAgents",
                "parameters": [_FIELDS],
                "responses": _read(("200", "the agents", "AgentList")),
            },
            "post": {
                "summary": "load an agent; answers once it is running",
                "operationId": "loadAgent",
                "security": _BEARER,
                "requestBody": {"required": True, **_body(_ref("LoadRequest"))},
                "responses": _answers(
                    ("201", "loaded and running", "Agent"), 400, 409, 413, 422, *_CHANGE
                ),
            },
        },
        "/agents/{id}": {
            "get": {
                "summary": "one agent",
                "operationId": "getAgent",
                "parameters": [_ID, _FIELDS],
                "responses": _read(("200", "the agent", "Agent"), 404),
            },
            "delete": {
                "summary": "unload an agent loaded over the API; answers after its cleanup",
                "operationId": "unloadAgent",
                "parameters": [_ID],
                "security": _BEARER,
                "responses": _answers(("200", "unloaded", "Unloaded"), 404, 409, 422, *_CHANGE),
            },
        },
        "/agents/{id}/start": _control("start"),
        "/agents/{id}/stop": _control("stop"),
        "/agents/{id}/restart": _control("restart"),
        "/reload": {
            "post": {
                "summary": "reconcile with the manifest file; answers once converged",
                "operationId": "reload",
                "security": _BEARER,
                "responses": _answers(("200", "what changed", "ReloadResult"), 422, *_CHANGE),
            }
        },
        "/healthz": {
            "get": {
                "summary": "the supervisor's loop answers",
                "operationId": "healthz",
                "responses": _answers(("200", "alive", "Health")),
            }
        },
        "/readyz": {
            "get": {
                "summary": "every enabled agent running or exited ok",
                "operationId": "readyz",
                "responses": {
                    "200": {"description": "ready", **_body(_ref("Ready"))},
                    "503": {"description": "the agents not ready, and why", **_body(_ref("Ready"))},
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "operationId": "metrics",
                "responses": {
                    "200": {
                        "description": "Prometheus text format",
                        **_body({"type": "string"}, METRICS_MEDIA_TYPE),
                    }
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "this document",
                "operationId": "openapi",
                "responses": {"200": {"description": "OpenAPI 3.1", **_body({"type": "object"})}},
            }
        },
        **OBSERVE_PATHS,
    },
    "components": {
        "securitySchemes": {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "needed when a token is set ($SUPERVISOR_TOKEN or "
                "api_token_file); without one, changes are served on loopback or a unix "
                "socket only",
            }
        },
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error"],
                "properties": {"error": {"type": "string"}, "errors": _STRINGS},
            },
            "Exit": {
                "type": "object",
                "required": ["at"],
                "properties": {
                    "at": {"type": "number"},
                    "code": {"type": "integer"},
                    "signal": {"type": "string"},
                    "error": {"type": "string"},
                    "stopped": {"type": "boolean", "description": "the run ended by a stop"},
                    "killed": {
                        "type": "boolean",
                        "description": "it needed SIGKILL: stop_timeout passed first",
                    },
                },
            },
            "Agent": _AGENT_SCHEMA,
            "AgentList": {
                "type": "object",
                "required": ["agents"],
                "properties": {"agents": {"type": "array", "items": _ref("Agent")}},
            },
            # ?fields=: each AGENT with only the keys asked (spec: only its keys asked)
            "AgentFields": {"type": "object", "properties": _AGENT_SCHEMA["properties"]},
            "AgentListFields": {
                "type": "object",
                "required": ["agents"],
                "properties": {"agents": {"type": "array", "items": _ref("AgentFields")}},
            },
            "LoadRequest": {
                "type": "object",
                "description": "an agent's keys, as in the manifest (see `supervisor schema`), "
                "and its id; `id` may be left out for a `path` agent",
                "properties": {
                    "id": {"type": "string", "pattern": mf.ID_PATTERN},
                    "entry": {"type": "string"},
                    "command": {"oneOf": [{"type": "string"}, _STRINGS]},
                    "path": {"type": "string"},
                },
                "additionalProperties": True,
            },
            "Unloaded": {
                "type": "object",
                "required": ["unloaded"],
                "properties": {"unloaded": {"type": "string"}},
            },
            "ReloadResult": {
                "type": "object",
                "required": ["started", "stopped", "restarted", "unchanged", "failed"],
                "properties": {
                    "started": _STRINGS,
                    "stopped": _STRINGS,
                    "restarted": _STRINGS,
                    "unchanged": _STRINGS,
                    "failed": {
                        "type": "object",
                        "additionalProperties": {"type": "string"},
                        "description": "{id: reason} of the agents that failed to start",
                    },
                },
            },
            "Health": {
                "type": "object",
                "required": ["ok"],
                "properties": {"ok": {"type": "boolean"}},
            },
            "Ready": {
                "type": "object",
                "required": ["ready", "not_ready"],
                "properties": {
                    "ready": {"type": "boolean"},
                    "not_ready": {"type": "object", "additionalProperties": {"type": "string"}},
                },
            },
            **OBSERVE_SCHEMAS,
        },
    },
}
