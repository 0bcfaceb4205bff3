"""Prometheus metrics, read from the supervisor at scrape time.

Nothing is counted per event: a state change, a restart or an exit costs the metrics
nothing. `SupervisorCollector.collect()` walks `Supervisor.slots` when Prometheus scrapes
(O(agents) per scrape), which is cheaper than keeping thousands of gauges current. The
one thing counted as it happens is API requests, by the API's own middleware.
prometheus-client itself is imported at the first scrape, not at start: a supervisor
nobody scrapes never loads it (3 MiB, docs/performance.md).

Each agent's state is one sample, ``supervisor_agent_state{agent, state} 1``, for the
state it is in now: with 10,000 agents the enum form (one sample per possible state)
would be 70,000 series. Prometheus marks the previous state's series stale at the next
scrape, so ``supervisor_agent_state{state="failed"} == 1`` still alerts as expected.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

import trio

from supervisor import logs
from supervisor.usage import read_usage

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from supervisor.owner import Supervisor

# (route template, method, status code) -> requests answered
RequestCounts = Counter[tuple[str, str, str]]


class SupervisorCollector:
    """A prometheus-client collector for one supervisor (and its API's request counts).

    Register it in a `CollectorRegistry`; `collect()` must run in the supervisor's trio
    thread (the API's /metrics handler does), since it reads trio time.
    """

    def __init__(self, sup: Supervisor, requests: RequestCounts | None = None) -> None:
        self.sup = sup
        self.requests: RequestCounts = requests if requests is not None else Counter()

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily

        yield from self._agents()
        yield from self._reloads()
        yield from _output_drops()
        requests = CounterMetricFamily(
            "supervisor_api_requests",
            "HTTP API requests answered, by route template, method and status code",
            labels=["route", "method", "code"],
        )
        for labels, count in sorted(self.requests.items()):
            requests.add_metric(list(labels), count)
        yield requests

    def _agents(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        state = GaugeMetricFamily(
            "supervisor_agent_state",
            "1 for the state each agent is in now",
            labels=["agent", "state"],
        )
        up = GaugeMetricFamily(
            "supervisor_agent_up", "1 if the agent is running or exited ok", labels=["agent"]
        )
        restarts = CounterMetricFamily(
            "supervisor_agent_restarts",
            "restarts by policy since the agent was loaded",
            labels=["agent"],
        )
        uptime = GaugeMetricFamily(
            "supervisor_agent_uptime_seconds",
            "seconds since the agent became running (0 when not running)",
            labels=["agent"],
        )
        now = trio.current_time()
        for agent_id, slot in self.sup.slots.items():
            state.add_metric([agent_id, slot.state], 1)
            up.add_metric([agent_id], 1 if slot.up else 0)
            restarts.add_metric([agent_id], slot.restarts)
            seconds = 0.0
            if slot.state == "running" and slot.started_at is not None:
                seconds = now - slot.started_at
            uptime.add_metric([agent_id], seconds)
        agents = GaugeMetricFamily("supervisor_agents", "agents in the slot table")
        agents.add_metric([], len(self.sup.slots))
        yield from (agents, state, up, restarts, uptime)
        yield from self._health()

    def _health(self) -> Iterator[Metric]:
        """Probe checks, runs ended by health, and loop blocking (docs/agents.md, Health)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        checks = CounterMetricFamily(
            "supervisor_agent_probe_checks",
            "probe checks, by probe (ready, liveness) and result (ok, failed)",
            labels=["agent", "probe", "result"],
        )
        last = GaugeMetricFamily(
            "supervisor_agent_probe_ok",
            "1 if the agent's last probe check passed, 0 if it failed",
            labels=["agent", "probe"],
        )
        ended = CounterMetricFamily(
            "supervisor_agent_health_failures",
            "runs ended by health: a liveness probe's failures or a watchdog miss",
            labels=["agent", "by"],
        )
        blocked = CounterMetricFamily(
            "supervisor_agent_blocked_seconds",
            "seconds an in-process agent held the event loop in steps over loop_lag_warning",
            labels=["agent"],
        )
        cpu = CounterMetricFamily(
            "supervisor_agent_cpu_seconds",
            "CPU time of the agent: its current run's processes' user + system time"
            " (children waited for included); in-process: the time its tasks held the loop",
            labels=["agent"],
        )
        rss = GaugeMetricFamily(
            "supervisor_agent_memory_rss_bytes",
            "resident memory of the agent's processes (process agents that run)",
            labels=["agent"],
        )
        for agent_id, usage in read_usage(self.sup.slots.values()).items():
            cpu.add_metric([agent_id], usage.cpu_seconds)
            if usage.rss is not None:
                rss.add_metric([agent_id], usage.rss)
        yield from (cpu, rss)
        for agent_id, slot in self.sup.slots.items():
            if slot.spec.kind == "in-process":
                blocked.add_metric([agent_id], slot.blocked)
            record = slot.health
            if record is None:
                continue
            for (what, result), count in record.checks.items():
                if result == "ended":
                    ended.add_metric([agent_id, what], count)
                else:
                    checks.add_metric([agent_id, what, result], count)
            if record.probe:
                last.add_metric([agent_id, record.probe], 1 if record.result == "ok" else 0)
        yield from (checks, last, ended, blocked)

    def _reloads(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        reloads = CounterMetricFamily(
            "supervisor_reloads", "reloads of the manifest, by result", labels=["result"]
        )
        reloads.add_metric(["ok"], self.sup.reloads_ok)
        reloads.add_metric(["failed"], self.sup.reloads_failed)
        yield reloads
        if self.sup.last_reload is not None:
            last = GaugeMetricFamily(
                "supervisor_last_reload_timestamp_seconds",
                "wall time of the last successful reload",
            )
            last.add_metric([], self.sup.last_reload)
            yield last


def _output_drops() -> Iterator[Metric]:
    """Lines not written to our stdout because it was too slow (docs/operations.md)."""
    from prometheus_client.core import CounterMetricFamily

    agents = CounterMetricFamily(
        "supervisor_output_dropped_lines",
        "agents' output lines not written to stdout because it was too slow (still kept "
        "in their recent output)",
        labels=["agent"],
    )
    for agent_id, count in sorted(logs.dropped.items()):
        agents.add_metric([agent_id], count)
    yield agents
    own = CounterMetricFamily(
        "supervisor_log_dropped_records",
        "the supervisor's own log records not written to stdout because it was too slow",
    )
    own.add_metric([], logs.own_dropped)
    yield own
