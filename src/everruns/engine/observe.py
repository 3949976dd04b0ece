"""What one run's committed events tell the operator: metrics always, traces when on.

`RunLog` hands this observer the journal it read at the claim (`loaded`) and each
event it commits (`committed`); nothing else in the engine counts. So the counters
move exactly as the journal says, a deferred event is counted when it is durable,
and an event fenced off (a stale holder's) is never counted.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

from everruns import metrics as m
from everruns.core.events import Event, EventType
from everruns.core.state import State
from everruns.engine import tracing

_TOOL_OUTCOMES: dict[str, str] = {
    EventType.TOOL_COMPLETED: "ok",
    EventType.TOOL_FAILED: "error",
    EventType.TOOL_WAITING: "waiting",
}


class RunObserver:
    """Metrics (and, with tracing on, spans) of one run under one claim."""

    def __init__(self, run_id: str, agent: str, epoch: int, worker_id: str):
        self.agent = agent
        sink = tracing.sink()
        self.tracer = (
            tracing.RunTracer(sink, run_id, agent, epoch, worker_id) if sink is not None else None
        )
        self._last_ts: float | None = None  # the journal's last event at the claim
        self._llm: tuple[float, _ModelMetrics] | None = None  # started ts, its metrics
        self._tools: dict[Any, tuple[float, dict[str, Any]]] = {}  # call id -> (ts, metrics)
        self._handlers: dict[str, Callable[[Event], None]] = {
            EventType.RUN_STARTED: self._run_started,
            EventType.RUN_COMPLETED: self._run_completed,
            EventType.RUN_FAILED: self._run_failed,
            EventType.RUN_CANCELLED: self._run_cancelled,
            EventType.RUN_WAITING: self._run_waiting,
            EventType.LLM_STARTED: self._llm_started,
            EventType.LLM_COMPLETED: self._llm_completed,
            EventType.LLM_FAILED: self._llm_failed,
            EventType.TOOL_STARTED: self._tool_started,
            EventType.TOOL_COMPLETED: self._tool_ended,
            EventType.TOOL_FAILED: self._tool_ended,
            EventType.TOOL_WAITING: self._tool_ended,
            EventType.CONTEXT_COMPACTED: self._compacted,
        }

    def loaded(self, events: list[Event], state: State) -> None:
        if self._last_ts is None and events:
            self._last_ts = events[-1].ts
        if self.tracer is not None:
            self.tracer.loaded(events, state)

    def committed(self, event: Event, state: State) -> None:
        handler = self._handlers.get(event.type)
        if handler is not None:
            handler(event)
        if self.tracer is not None:
            self.tracer.committed(event, state)

    def headers(self, started: Event) -> dict[str, str]:
        """W3C trace context for what the atom opened by `started` calls ({} when off)."""
        return self.tracer.headers(started) if self.tracer is not None else {}

    # -------------------------------------------------------------- handlers

    def _run_started(self, event: Event) -> None:
        data = event.data
        if data.get("takeover"):
            kind = "takeover"
            m.TAKEOVERS.labels(self.agent).inc()
            if self._last_ts is not None:
                m.TAKEOVER_SECONDS.observe(max(0.0, event.ts - self._last_ts))
        else:
            kind = "resumed" if data.get("resumed") else "fresh"
        m.RUN_STARTS.labels(self.agent, kind).inc()

    def _run_completed(self, event: Event) -> None:
        m.RUN_COMPLETIONS.labels(self.agent).inc()

    def _run_failed(self, event: Event) -> None:
        m.RUN_FAILURES.labels(self.agent, str(event.data.get("reason") or "unknown")).inc()

    def _run_cancelled(self, event: Event) -> None:
        m.RUN_CANCELLATIONS.labels(self.agent).inc()

    def _run_waiting(self, event: Event) -> None:
        m.DURABLE_WAITS.labels(str(event.data.get("reason") or "signal")).inc()

    def _llm_started(self, event: Event) -> None:
        self._llm = (event.ts, _model(str(event.data.get("model", ""))))

    def _llm_completed(self, event: Event) -> None:
        kids = self._llm_ended(event, ok=True)
        _charge(kids, event.data.get("usage"))

    def _llm_failed(self, event: Event) -> None:
        self._llm_ended(event, ok=False)
        kids = _model(str(event.data.get("model", "")))  # the failed model (not a fallback)
        error_class = str(event.data.get("class") or "unknown")
        m.PROVIDER_ERRORS.labels(kids.provider, kids.model, error_class).inc()
        if event.data.get("breaker_open_until") is not None:
            m.BREAKER_OPENINGS.labels(f"{kids.provider}:{kids.model}").inc()
        _charge(kids, event.data.get("usage"))

    def _llm_ended(self, event: Event, *, ok: bool) -> _ModelMetrics:
        started, self._llm = self._llm, None
        if started is None:  # started under an earlier claim
            return _model(str(event.data.get("model", "")))
        ts, kids = started
        (kids.ok if ok else kids.error).observe(max(0.0, event.ts - ts))
        return kids

    def _compacted(self, event: Event) -> None:
        _charge(_model(str(event.data.get("model", ""))), event.data.get("usage"))

    def _tool_started(self, event: Event) -> None:
        self._tools[event.data.get("call_id")] = (event.ts, _tool(str(event.data.get("name"))))

    def _tool_ended(self, event: Event) -> None:
        started = self._tools.pop(event.data.get("call_id"), None)
        if event.type == EventType.TOOL_WAITING:
            m.DURABLE_WAITS.labels(str(event.data.get("reason") or "sleep")).inc()
        if started is None:
            return  # no start under this claim (interrupted, denied, woken)
        ts, by_outcome = started
        by_outcome[event.type].observe(max(0.0, event.ts - ts))


class _ModelMetrics(NamedTuple):
    """The metric children of one model label, looked up once."""

    provider: str
    model: str
    ok: Any
    error: Any
    input: Any
    output: Any
    cached: Any
    cost: Any


@functools.lru_cache(maxsize=1024)
def _model(label: str) -> _ModelMetrics:
    provider, model = m.split_label(label)
    return _ModelMetrics(
        provider,
        model,
        m.LLM_SECONDS.labels(provider, model, "ok"),
        m.LLM_SECONDS.labels(provider, model, "error"),
        m.LLM_TOKENS.labels(provider, model, "input"),
        m.LLM_TOKENS.labels(provider, model, "output"),
        m.LLM_TOKENS.labels(provider, model, "cached_input"),
        m.LLM_COST.labels(provider, model),
    )


@functools.lru_cache(maxsize=4096)
def _tool(name: str) -> dict[str, Any]:
    """The latency children of one tool by the event type that ends a call."""
    return {kind: m.TOOL_SECONDS.labels(name, outcome) for kind, outcome in _TOOL_OUTCOMES.items()}


def _charge(kids: _ModelMetrics, usage: dict[str, Any] | None) -> None:
    if not usage:
        return
    if usage.get("input_tokens"):
        kids.input.inc(usage["input_tokens"])
    if usage.get("output_tokens"):
        kids.output.inc(usage["output_tokens"])
    if usage.get("cached_input_tokens"):
        kids.cached.inc(usage["cached_input_tokens"])
    if usage.get("cost_usd"):
        kids.cost.inc(float(usage["cost_usd"]))
