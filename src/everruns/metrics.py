"""Prometheus metrics of this process (docs/observability.md lists them).

One registry per process, `REGISTRY`. The engine counts what its runs journal
(`engine/observe.py`: every committed event moves the counters, so they agree with
the journal); the journal's hot path only observes one histogram; the fleet-wide
gauges (runs by status, queue, breakers, workers) are read from the database when
`/metrics` is scraped (`api/metrics.py`). The worker serves the same registry on
`everruns worker --metrics-port`.

The counters and histograms counted per event are our own small classes, not
prometheus-client's: theirs take a lock per bucket and per sample, which made the
per-step hook cost a few percent of a step; ours are a float add (and a bisect) on the
event loop's thread, turned into Prometheus families when scraped (`_Collector`; a
scrape from the metrics thread reads floats, which the GIL keeps whole). Nothing here
does I/O.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, generate_latest, start_http_server
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString


class _CounterChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class _HistogramChild:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, amount)] += 1
        self.sum += amount


class _Family:
    """A labelled metric: `labels(*values)` returns the child that counts."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        buckets: Sequence[float] | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.buckets = tuple(float(b) for b in buckets) if buckets is not None else None
        self.children: dict[tuple[str, ...], Any] = {}
        _FAMILIES.append(self)

    def labels(self, *values: str) -> Any:
        child = self.children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name}: labels {self.labelnames}, got {values}")
            child = _HistogramChild(self.buckets) if self.buckets else _CounterChild()
            self.children[values] = child
        return child

    def inc(self, amount: float = 1.0) -> None:
        self.labels().inc(amount)

    def observe(self, amount: float) -> None:
        self.labels().observe(amount)

    def collect(self) -> Any:
        if self.buckets is None:
            counter = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
            for values, child in list(self.children.items()):
                counter.add_metric(list(values), child.value)
            return counter
        histogram = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in list(self.children.items()):
            counts, running, buckets = list(child.counts), 0, []
            for bound, n in zip([*child.bounds, float("inf")], counts, strict=True):
                running += n
                buckets.append((floatToGoString(bound), running))
            histogram.add_metric(list(values), buckets, child.sum)
        return histogram


_FAMILIES: list[_Family] = []


class _Collector(Collector):
    def collect(self) -> Iterator[Any]:
        for family in _FAMILIES:
            yield family.collect()


def Counter(*args: Any, **kwargs: Any) -> _Family:
    kwargs.pop("buckets", None)
    return _Family(*args, **kwargs)


def Histogram(*args: Any, buckets: Sequence[float], **kwargs: Any) -> _Family:
    return _Family(*args, buckets=buckets, **kwargs)


REGISTRY = CollectorRegistry(auto_describe=True)
REGISTRY.register(_Collector())

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
