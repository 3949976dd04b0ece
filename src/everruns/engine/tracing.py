"""Traces of runs (OpenTelemetry, GenAI semantic conventions), built from the journal.

Configured by the standard `OTEL_*` variables: tracing is on when an OTLP endpoint
(`OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) or
`OTEL_TRACES_EXPORTER` (otlp, console) is set, and off when `OTEL_SDK_DISABLED=true`
or `OTEL_TRACES_EXPORTER=none`. Off, `sink()` is None, the SDK is never imported and
every hook in the engine is one `is None` test.

A span is emitted when the journal commits the event that ends it, with the start
and end times of the two events, so a span exists exactly when the journal says the
atom happened. Ids are derived, not random: the trace id from the run id (a takeover
on another worker continues the same trace, a sub-agent's trace is linked to its
parent's spawn span) and an atom's span id from the run id and the seq of its
`*.started` event. A worker that takes a run over finds in the journal the atoms its
dead predecessor started and never finished, and closes their spans with an error
status (same ids), so a trace has no holes. Spans still open when a worker stops
gracefully are left to the next holder the same way; a user's cancel closes them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from everruns.core.events import TERMINAL_EVENTS, Event, EventType
from everruns.core.state import State
from everruns.engine.spans import CAPTURE_CONTENT, Sink, SpanRecord

__all__ = ["CAPTURE_CONTENT", "RunTracer", "Sink", "SpanRecord"]

log = logging.getLogger("everruns.tracing")
_SINK: Sink | None = None
_CONFIGURED = False


def enabled(env: Mapping[str, str]) -> bool:
    """Whether the OTEL_* variables ask for traces."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER")
    if exporter is not None and exporter.strip():
        return exporter.strip().lower() != "none"
    return bool(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def sink() -> Sink | None:
    """This process's span sink, configured from the environment on first use."""
    global _SINK, _CONFIGURED
    if not _CONFIGURED:
        _CONFIGURED = True
        if enabled(os.environ):
            try:
                from everruns.engine.otel import OtelSink  # only now: no SDK import when off

                _SINK = OtelSink.from_env(os.environ)
            except ImportError as exc:
                log.error(
                    "OTEL_* variables ask for traces but the OpenTelemetry SDK is missing "
                    "(%s): pip install 'everruns[otel]'; tracing is off",
                    exc,
                )
            except ValueError as exc:  # an unsupported exporter or protocol
                log.error("tracing is off: %s", exc)
    return _SINK


def flush() -> None:
    """Export what is batched (a worker stopping; the SDK also does it at exit)."""
    if _SINK is not None:
        _SINK.flush()


def set_sink(value: Sink | None) -> None:
    """Replace the sink (tests and benchmarks)."""
    global _SINK, _CONFIGURED
    _SINK, _CONFIGURED = value, True


# ------------------------------------------------------------------ derived ids


def _digest(text: str, nbytes: int) -> int:
    value = int.from_bytes(hashlib.sha256(text.encode()).digest()[:nbytes], "big")
    return value or 1  # an all-zero id is invalid


def trace_id(run_id: str) -> int:
    return _digest(f"everruns-trace:{run_id}", 16)


def root_span_id(run_id: str, turn: int = 0) -> int:
    """The `invoke_agent` span of a run's `turn`-th ending (a follow-up message reopens a
    finished run: each turn is its own span in the run's one trace)."""
    return _digest(f"everruns-run:{run_id}:{turn}", 8)


def atom_span_id(run_id: str, seq: int) -> int:
    """The span of the atom whose `*.started` event has this seq."""
    return _digest(f"everruns-atom:{run_id}:{seq}", 8)


def traceparent(trace: int, span: int) -> str:
    return f"00-{trace:032x}-{span:016x}-01"


def parse_traceparent(value: str) -> tuple[int, int] | None:
    parts = value.strip().split("-")
    if len(parts) != 4 or len(parts[1]) != 32 or len(parts[2]) != 16:
        return None
    try:
        return int(parts[1], 16), int(parts[2], 16)
    except ValueError:
        return None


# ------------------------------------------------------------------ one run


@dataclass
class _Open:
    name: str
    seq: int
    ts: float
    attributes: dict[str, Any]


class RunTracer:
    """The spans of one run under one claim, fed the events its worker commits."""

    def __init__(self, out: Sink, run_id: str, agent: str, epoch: int, worker_id: str):
        self.out = out
        self.run_id = run_id
        self.agent = agent
        self.epoch = epoch
        self.worker_id = worker_id
        self.trace = trace_id(run_id)
        self.turn = 0  # terminal events so far
        self.root = root_span_id(run_id)
        self.turn_start: float | None = None
        self.links: list[tuple[int, int]] = []
        self.open: dict[str, _Open] = {}
        self._loaded = False

    def headers(self, started: Event) -> dict[str, str]:
        """W3C trace context of the atom `started` opened (for requests it makes)."""
        return {"traceparent": traceparent(self.trace, atom_span_id(self.run_id, started.seq))}

    def loaded(self, events: list[Event], state: State) -> None:
        """The journal as read at the claim: close what a dead holder left open."""
        if self._loaded:
            return
        self._loaded = True
        for event in events:
            if event.type == EventType.RUN_CREATED:
                self.turn_start = event.ts
                parent = (event.data.get("trace") or {}).get("traceparent")
                link = parse_traceparent(parent) if parent else None
                self.links = [link] if link else []
            self._track(event, state, emit=False)
        now = time.time()
        for key in list(self.open):
            self._close(
                key,
                now,
                {},
                error=f"cut off: its worker stopped before a result was journaled "
                f"(closed at takeover by {self.worker_id})",
            )

    def committed(self, event: Event, state: State) -> None:
        self._track(event, state, emit=True)

    # -------------------------------------------------------------- pairing

    def _track(self, event: Event, state: State, *, emit: bool) -> None:
        kind, data = event.type, event.data
        if self.turn_start is None:
            self.turn_start = event.ts
        if kind == EventType.LLM_STARTED:
            self._start("llm", event, self._chat_start(data, state))
        elif kind in (EventType.LLM_COMPLETED, EventType.LLM_FAILED):
            self._end("llm", event, emit, self._chat_end(event))
        elif kind == EventType.TOOL_STARTED:
            self._start(f"tool:{data.get('call_id')}", event, self._tool_start(data, state))
        elif kind in (EventType.TOOL_COMPLETED, EventType.TOOL_FAILED, EventType.TOOL_WAITING):
            self._end(f"tool:{data.get('call_id')}", event, emit, self._tool_end(event))
        elif kind == EventType.COMPACTION_STARTED:
            attrs = {"gen_ai.operation.name": "chat", "everruns.purpose": "compaction"}
            self._start("compaction", event, ("compaction", attrs))
        elif kind == EventType.CONTEXT_COMPACTED:
            self._end("compaction", event, emit, (self._usage_attrs(data, data.get("model")), None))
        elif kind in TERMINAL_EVENTS:
            if emit:
                for key in list(self.open):
                    self._close(key, event.ts, {}, error=f"the run ended ({kind})")
                self._emit_root(event, state)
            self.open.clear()
            self.turn += 1
            self.root = root_span_id(self.run_id, self.turn)
            self.turn_start = None
            self.links = []

    def _start(self, key: str, event: Event, named: tuple[str, dict[str, Any]]) -> None:
        name, attrs = named
        self.open[key] = _Open(name, event.seq, event.ts, attrs)

    def _end(
        self, key: str, event: Event, emit: bool, extra: tuple[dict[str, Any], str | None]
    ) -> None:
        if key not in self.open:
            return
        if not emit:
            del self.open[key]
            return
        attrs, error = extra
        self._close(key, event.ts, attrs, error=error)

    def _close(self, key: str, end: float, attrs: dict[str, Any], *, error: str | None) -> None:
        span = self.open.pop(key)
        attributes = {**self._common(), **span.attributes, **attrs}
        if error is not None:
            attributes.setdefault("error.type", "cut_off" if "cut off" in error else "error")
        self.out.emit(
            SpanRecord(
                name=span.name,
                trace_id=self.trace,
                span_id=atom_span_id(self.run_id, span.seq),
                parent_id=self.root,
                start=span.ts,
                end=max(end, span.ts),
                attributes=attributes,
                error=error,
                kind="client",
            )
        )

    # -------------------------------------------------------------- attributes

    def _common(self) -> dict[str, Any]:
        return {"everruns.run.id": self.run_id, "everruns.epoch": self.epoch}

    def _chat_start(self, data: dict[str, Any], state: State) -> tuple[str, dict[str, Any]]:
        provider, _, model = str(data.get("model", "")).partition(":")
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": provider,
            "gen_ai.request.model": model,
            "everruns.attempt": int(data.get("attempt", 1)),
            "everruns.step": int(data.get("step", 0)),
        }
        if self.out.capture_content:
            attrs["gen_ai.input.messages"] = _json(state.messages)
        return f"chat {model}", attrs

    def _chat_end(self, event: Event) -> tuple[dict[str, Any], str | None]:
        data = event.data
        attrs = self._usage_attrs(data, data.get("model"))
        if event.type == EventType.LLM_FAILED:
            attrs["error.type"] = str(data.get("class") or "error")
            return attrs, str(data.get("error") or "the LLM call failed")
        if data.get("stop_reason"):
            attrs["gen_ai.response.finish_reasons"] = [str(data["stop_reason"])]
        if self.out.capture_content and data.get("message") is not None:
            attrs["gen_ai.output.messages"] = _json([data["message"]])
        return attrs, None

    @staticmethod
    def _usage_attrs(data: dict[str, Any], model: Any) -> dict[str, Any]:
        usage = data.get("usage") or {}
        attrs: dict[str, Any] = {}
        if model:
            attrs["gen_ai.response.model"] = str(model).partition(":")[2] or str(model)
        if "input_tokens" in usage:
            attrs["gen_ai.usage.input_tokens"] = int(usage["input_tokens"])
        if "output_tokens" in usage:
            attrs["gen_ai.usage.output_tokens"] = int(usage["output_tokens"])
        if usage.get("cost_usd") is not None:
            attrs["everruns.cost_usd"] = float(usage["cost_usd"])
        return attrs

    def _tool_start(self, data: dict[str, Any], state: State) -> tuple[str, dict[str, Any]]:
        name = str(data.get("name"))
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": name,
            "gen_ai.tool.call.id": str(data.get("call_id")),
            "everruns.effect": str(data.get("effect")),
            "everruns.attempt": int(data.get("attempt", 1)),
        }
        if self.out.capture_content:
            call = next((c for c in state.calls if c.id == data.get("call_id")), None)
            if call is not None:
                attrs["gen_ai.tool.call.arguments"] = _json(call.arguments)
        return f"execute_tool {name}", attrs

    def _tool_end(self, event: Event) -> tuple[dict[str, Any], str | None]:
        data = event.data
        attrs: dict[str, Any] = {}
        if data.get("child"):
            attrs["everruns.child_run.id"] = str(data["child"])
        if event.type == EventType.TOOL_WAITING:
            attrs["everruns.waiting"] = str(data.get("reason") or "wait")
        if self.out.capture_content and "output" in data:
            attrs["gen_ai.tool.call.result"] = str(data["output"])
        if event.type == EventType.TOOL_FAILED:
            return attrs, str(data.get("error") or "the tool failed")
        return attrs, None

    def _emit_root(self, event: Event, state: State) -> None:
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": self.agent,
            "everruns.run.id": self.run_id,
            "everruns.turn": self.turn,
            "everruns.status": event.type.split(".")[1],
            "everruns.steps": state.steps,
            "everruns.starts": state.starts,
            "gen_ai.usage.input_tokens": state.input_tokens,
            "gen_ai.usage.output_tokens": state.output_tokens,
            "everruns.cost_usd": state.cost_usd,
        }
        error = None
        if event.type != EventType.RUN_COMPLETED:
            error = str(event.data.get("error") or event.data.get("reason") or event.type)
            attrs["error.type"] = str(event.data.get("reason") or event.type)
        start = self.turn_start if self.turn_start is not None else state.created_ts
        self.out.emit(
            SpanRecord(
                name=f"invoke_agent {self.agent}",
                trace_id=self.trace,
                span_id=self.root,
                parent_id=None,
                start=start or event.ts,
                end=event.ts,
                attributes=attrs,
                error=error,
                links=list(self.links),
            )
        )


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)
