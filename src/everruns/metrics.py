"""Prometheus metrics of this process (docs/observability.md lists them).

One registry per process, `REGISTRY`. The engine counts what its runs journal
(`engine/observe.py`: every committed event moves the counters, so they agree with
the journal); the journal's hot path only observes one histogram; the fleet-wide
gauges (runs by status, queue, breakers, workers) are read from the database when
`/metrics` is scraped (`api/metrics.py`). The worker serves the same registry on
`everruns worker --metrics-port`.

Counters are cheap (a lock and an add); nothing here does I/O.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)

REGISTRY = CollectorRegistry(auto_describe=True)

# LLM calls take seconds to minutes; tools milliseconds to minutes.
_SLOW = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)

RUN_STARTS = Counter(
    "everruns_run_starts",
    "Claims that started executing a run, by kind (fresh, resumed, takeover).",
    ["agent", "kind"],
    registry=REGISTRY,
)
RUN_COMPLETIONS = Counter(
    "everruns_run_completions", "Runs that completed.", ["agent"], registry=REGISTRY
)
RUN_FAILURES = Counter(
    "everruns_run_failures", "Runs that failed, by reason.", ["agent", "reason"], registry=REGISTRY
)
RUN_CANCELLATIONS = Counter(
    "everruns_run_cancellations", "Runs that were cancelled.", ["agent"], registry=REGISTRY
)
TAKEOVERS = Counter(
    "everruns_takeovers",
    "Runs taken over after their previous holder died (lease expired).",
    ["agent"],
    registry=REGISTRY,
)
TAKEOVER_SECONDS = Histogram(
    "everruns_takeover_seconds",
    "From a dead holder's last journaled event to the takeover's run.started.",
    buckets=(1, 2.5, 5, 10, 15, 20, 30, 45, 60, 120, 300, 900),
    registry=REGISTRY,
)
LLM_SECONDS = Histogram(
    "everruns_llm_call_seconds",
    "LLM call latency (llm.started to llm.completed or llm.failed).",
    ["provider", "model", "outcome"],
    buckets=_SLOW,
    registry=REGISTRY,
)
LLM_TTFT = Histogram(
    "everruns_llm_ttft_seconds",
    "Time to the first streamed token of an LLM call.",
    ["provider", "model"],
    buckets=_SLOW,
    registry=REGISTRY,
)
LLM_TOKENS = Counter(
    "everruns_llm_tokens",
    "Tokens charged by provider and model (kind: input, output, cached_input).",
    ["provider", "model", "kind"],
    registry=REGISTRY,
)
LLM_COST = Counter(
    "everruns_llm_cost_usd",
    "Cost in USD by provider and model (as priced by the configured prices).",
    ["provider", "model"],
    registry=REGISTRY,
)
PROVIDER_ERRORS = Counter(
    "everruns_provider_errors",
    "Failed LLM calls by provider, model and error class.",
    ["provider", "model", "error_class"],
    registry=REGISTRY,
)
BREAKER_OPENINGS = Counter(
    "everruns_breaker_openings",
    "Circuit breakers this process opened, by breaker key.",
    ["key"],
    registry=REGISTRY,
)
RATE_LIMIT_WAITS = Counter(
    "everruns_rate_limit_waits",
    "Times a call found a fleet-wide rate-limit bucket empty (durable: the run parked).",
    ["key", "durable"],
    registry=REGISTRY,
)
RATE_LIMIT_WAIT_SECONDS = Counter(
    "everruns_rate_limit_wait_seconds",
    "Seconds of rate-limit waits asked for (slept in memory or parked).",
    ["key"],
    registry=REGISTRY,
)
TOOL_SECONDS = Histogram(
    "everruns_tool_seconds",
    "Tool call latency by tool and outcome (ok, error, waiting).",
    ["tool", "outcome"],
    buckets=(*_FAST, 10, 30, 60, 300),
    registry=REGISTRY,
)
JOURNAL_APPEND_SECONDS = Histogram(
    "everruns_journal_append_seconds",
    "Latency of one fenced journal append (queueing and group commit included).",
    buckets=_FAST,
    registry=REGISTRY,
)
DURABLE_WAITS = Counter(
    "everruns_durable_waits",
    "Durable waits journaled, by kind (approval, sleep, sub-agents, rate_limited, ...).",
    ["kind"],
    registry=REGISTRY,
)
INFLIGHT = Gauge(
    "everruns_inflight_runs",
    "Runs this worker process executes now.",
    ["worker"],
    registry=REGISTRY,
)


@functools.lru_cache(maxsize=8192)
def child(metric: Any, *labels: str) -> Any:
    """`metric.labels(*labels)`, cached: the engine counts per event, and a label lookup
    (a lock and a tuple) costs more than the increment itself."""
    return metric.labels(*labels)


def exposition() -> bytes:
    """The registry in the Prometheus text format."""
    return generate_latest(REGISTRY)


def split_label(label: str) -> tuple[str, str]:
    """(provider, model) of a model label such as `openai:gpt-4o-mini`."""
    provider, _, model = label.partition(":")
    return (provider, model) if model else ("unknown", label)


def first_token(label: str) -> Callable[[], None]:
    """A callback for each streamed delta of one LLM call: the first observes the TTFT."""
    provider, model = split_label(label)
    started = time.monotonic()
    seen = False

    def delta() -> None:
        nonlocal seen
        if not seen:
            seen = True
            LLM_TTFT.labels(provider, model).observe(time.monotonic() - started)

    return delta


def serve_metrics(host: str, port: int) -> int:
    """Serve the registry on http://host:port/metrics in a thread; the bound port."""
    server, _thread = start_http_server(port, addr=host, registry=REGISTRY)
    return int(server.server_address[1])
