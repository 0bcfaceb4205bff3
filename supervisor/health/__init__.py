"""Health: probes, watchdogs, and naming the agent that blocks the loop (docs/agents.md,
"Health").

- `monitor`: one run's monitors: a ready probe (gates ``running``), a liveness probe and
  a watchdog timer (each can end the run as failed, with its reason); `HealthRecord` is
  what a slot keeps of them.
- `probes`: the checks themselves (``http``, ``tcp``, ``exec``), each bounded by its
  timeout and never blocking the loop.
- `lag`: a trio instrument timing each task step, naming the in-process agent that held
  the loop too long.

A slot whose agent has no probe and no watchdog never touches this package (beyond the
import): no task, no record.
"""
