"""The HTTP control API: Starlette on our HTTP/1.1 server (h11, trio) (docs/api.md).

`serve` runs it; `app` holds the routes; `agent` the AGENT shape; `access` the address,
token and request rules; `body` reading bodies; `errors` JSON answers; `openapi` the
document; `metrics` the Prometheus collector; `cluster` the cluster's routes; `routing`
the helpers they share. Nothing here changes the slot table: changes are requests to the
owner (`supervisor.owner`).
"""
