"""What one run's committed events tell the operator: metrics always, traces when on.

`RunLog` hands this observer the journal it read at the claim (`loaded`) and each
event it commits (`committed`); nothing else in the engine counts. So the counters
move exactly as the journal says, a deferred event is counted when it is durable,
and an event fenced off (a stale holder's) is never counted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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
        self._llm: tuple[float, str, str] | None = None  # (started ts, provider, model)
        self._tools: dict[str, tuple[float, str]] = {}  # call id -> (started ts, tool)
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
            m.child(m.TAKEOVERS, self.agent).inc()
            if self._last_ts is not None:
                m.TAKEOVER_SECONDS.observe(max(0.0, event.ts - self._last_ts))
        else:
            kind = "resumed" if data.get("resumed") else "fresh"
        m.child(m.RUN_STARTS, self.agent, kind).inc()

    def _run_completed(self, event: Event) -> None:
        m.child(m.RUN_COMPLETIONS, self.agent).inc()

    def _run_failed(self, event: Event) -> None:
        m.child(m.RUN_FAILURES, self.agent, str(event.data.get("reason") or "unknown")).inc()

    def _run_cancelled(self, event: Event) -> None:
        m.child(m.RUN_CANCELLATIONS, self.agent).inc()

    def _run_waiting(self, event: Event) -> None:
        m.child(m.DURABLE_WAITS, str(event.data.get("reason") or "signal")).inc()

    def _llm_started(self, event: Event) -> None:
        provider, model = m.split_label(str(event.data.get("model", "")))
        self._llm = (event.ts, provider, model)

    def _llm_completed(self, event: Event) -> None:
        self._llm_ended(event, "ok")
        if self._llm is not None:
            provider, model = self._llm[1], self._llm[2]
        else:
            provider, model = m.split_label(str(event.data.get("model", "")))
        self._llm = None
        _charge(provider, model, event.data.get("usage") or {})

    def _llm_failed(self, event: Event) -> None:
        self._llm_ended(event, "error")
        provider, model = m.split_label(str(event.data.get("model", "")))
        self._llm = None
        m.child(m.PROVIDER_ERRORS, provider, model, str(event.data.get("class") or "unknown")).inc()
        if event.data.get("breaker_open_until") is not None:
            m.child(m.BREAKER_OPENINGS, f"{provider}:{model}").inc()
        _charge(provider, model, event.data.get("usage") or {})

    def _llm_ended(self, event: Event, outcome: str) -> None:
        if self._llm is not None:
            started, provider, model = self._llm
            m.child(m.LLM_SECONDS, provider, model, outcome).observe(max(0.0, event.ts - started))

    def _compacted(self, event: Event) -> None:
        provider, model = m.split_label(str(event.data.get("model", "")))
        _charge(provider, model, event.data.get("usage") or {})

    def _tool_started(self, event: Event) -> None:
        self._tools[str(event.data.get("call_id"))] = (event.ts, str(event.data.get("name")))

    def _tool_ended(self, event: Event) -> None:
        started = self._tools.pop(str(event.data.get("call_id")), None)
        if event.type == EventType.TOOL_WAITING:
            m.child(m.DURABLE_WAITS, str(event.data.get("reason") or "sleep")).inc()
        if started is None:
            return  # no start under this claim (interrupted, denied, woken)
        outcome = _TOOL_OUTCOMES[event.type]
        m.child(m.TOOL_SECONDS, started[1], outcome).observe(max(0.0, event.ts - started[0]))


def _charge(provider: str, model: str, usage: dict[str, Any]) -> None:
    for kind in ("input_tokens", "output_tokens", "cached_input_tokens"):
        value = usage.get(kind)
        if value:
            m.child(m.LLM_TOKENS, provider, model, kind.removesuffix("_tokens")).inc(value)
    if usage.get("cost_usd"):
        m.child(m.LLM_COST, provider, model).inc(float(usage["cost_usd"]))
