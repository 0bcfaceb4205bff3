"""The OpenAPI paths and schemas of the routes that watch (`supervisor.api.observe`)."""

from __future__ import annotations

from typing import Any

from supervisor import manifest as mf

_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": mf.ID_PATTERN},
}
_READ_ERRORS = {
    "401": {"description": "a token is set and the request has no Authorization: Bearer header"},
    "403": {"description": "wrong token"},
}
_SSE = {"text/event-stream": {"schema": {"type": "string"}}}

OBSERVE_PATHS: dict[str, Any] = {
    "/": {
        "get": {
            "summary": "the status page (HTML; it holds no data, so it needs no token)",
            "operationId": "statusPage",
            "responses": {
                "200": {
                    "description": "the page",
                    "content": {"text/html": {"schema": {"type": "string"}}},
                }
            },
        }
    },
    "/agents/{id}/logs": {
        "get": {
            "summary": "the agent's recent output, oldest first; follow=true streams it (SSE)",
            "operationId": "agentLogs",
            "parameters": [
                _ID,
                {
                    "name": "lines",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 0, "default": 100},
                },
                {"name": "follow", "in": "query", "schema": {"type": "boolean", "default": False}},
            ],
            "responses": {
                "200": {
                    "description": "the lines, or with follow=true an event stream of them",
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Lines"}},
                        **_SSE,
                    },
                },
                "400": {"description": "lines or follow is not valid"},
                "404": {"description": "no agent has that id"},
                **_READ_ERRORS,
            },
        }
    },
    "/events": {
        "get": {
            "summary": "Server-Sent Events: snapshot, then agent, removed, reload, shutdown",
            "operationId": "events",
            "parameters": [{"name": "Last-Event-ID", "in": "header", "schema": {"type": "string"}}],
            "responses": {
                "200": {"description": "the event stream", "content": _SSE},
                **_READ_ERRORS,
            },
        }
    },
}

OBSERVE_SCHEMAS: dict[str, Any] = {
    "Lines": {
        "type": "object",
        "required": ["lines"],
        "properties": {
            "lines": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["ts", "stream", "msg"],
                    "properties": {
                        "ts": {"type": "number"},
                        "stream": {"enum": ["stdout", "stderr", "log"]},
                        "msg": {"type": "string"},
                    },
                },
            }
        },
    }
}
