"""`/metrics`: this process's counters (everruns.metrics) plus the fleet's gauges, read
from the database at each scrape (runs by status and agent, the queue, breakers, workers).

The fleet gauges describe the whole deployment whichever API process is scraped; the
counters and histograms describe what this process's embedded worker executed (each
`everruns worker --metrics-port` serves its own).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from everruns import metrics
from everruns.core.events import RunStatus
from everruns.store import Store

STATUSES = tuple(s.value for s in RunStatus)


class _Snapshot(Collector):
    def __init__(self, families: list[GaugeMetricFamily]):
        self.families = families

    def collect(self) -> Iterator[Any]:
        yield from self.families


async def fleet_gauges(store: Store) -> list[GaugeMetricFamily]:
    now = time.time()
    health = store.health
    runs = GaugeMetricFamily(
        "everruns_runs", "Runs by status and agent.", labels=["status", "agent"]
    )
    by_status = dict.fromkeys(STATUSES, 0)
    for status, agent, count in await health.runs_by_status_agent():
        runs.add_metric([status, agent], count)
        by_status[status] = by_status.get(status, 0) + count
    totals = GaugeMetricFamily(
        "everruns_runs_by_status", "Runs by status (all agents).", labels=["status"]
    )
    for status, count in by_status.items():
        totals.add_metric([status], count)
    depth, oldest = await health.queue(now)
    queue = GaugeMetricFamily(
        "everruns_queue_depth", "Runs claimable now and not claimed.", value=depth
    )
    age = GaugeMetricFamily(
        "everruns_queue_oldest_runnable_seconds",
        "How long the longest-waiting claimable run has been due (0: none).",
        value=max(0.0, now - oldest) if oldest is not None else 0.0,
    )
    breaker = GaugeMetricFamily(
        "everruns_breaker_open", "1 while a circuit breaker is open.", labels=["key"]
    )
    failures = GaugeMetricFamily(
        "everruns_breaker_failures", "Consecutive failures counted by a breaker.", labels=["key"]
    )
    for b in await health.breakers():
        is_open = b["open_until"] is not None and b["open_until"] > now
        breaker.add_metric([b["key"]], 1.0 if is_open else 0.0)
        failures.add_metric([b["key"]], b["failures"])
    live = await store.list_workers()
    workers = GaugeMetricFamily("everruns_workers", "Live workers.", value=len(live))
    held = GaugeMetricFamily(
        "everruns_worker_runs", "Runs held by live workers.", value=sum(w["runs"] for w in live)
    )
    per_worker = GaugeMetricFamily(
        "everruns_worker_leased_runs", "Runs each live worker holds a lease on.", labels=["worker"]
    )
    for w in live:
        per_worker.add_metric([w["id"]], w["runs"])
    return [runs, totals, queue, age, breaker, failures, workers, held, per_worker]


async def exposition(store: Store) -> bytes:
    """The Prometheus text of this process's registry and the fleet's gauges."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(await fleet_gauges(store)))
    return generate_latest(registry) + metrics.exposition()
