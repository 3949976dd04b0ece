"""The OpenTelemetry SDK behind `engine/tracing.py` (imported only when tracing is on).

Spans are created with the SDK's tracer so the standard exporters, batching
(`OTEL_BSP_*`), resource (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`) and
sampling (`OTEL_TRACES_SAMPLER`) variables apply; their ids are the derived ones of
`tracing.py`, handed to the SDK through an id generator that returns a preset id.
Exporters: OTLP over HTTP/protobuf (default) or gRPC, chosen by
`OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` / `OTEL_EXPORTER_OTLP_PROTOCOL`, or `console`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opentelemetry import trace as api
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

from everruns.engine.spans import CAPTURE_CONTENT, SpanRecord

_KINDS = {
    "internal": api.SpanKind.INTERNAL,
    "client": api.SpanKind.CLIENT,
    "server": api.SpanKind.SERVER,
}


class _PresetIds(RandomIdGenerator):
    """Returns the ids set just before a span starts (spans start and end at once)."""

    def __init__(self) -> None:
        self.trace: int | None = None
        self.span: int | None = None

    def generate_trace_id(self) -> int:
        value, self.trace = self.trace, None
        return value if value is not None else super().generate_trace_id()

    def generate_span_id(self) -> int:
        value, self.span = self.span, None
        return value if value is not None else super().generate_span_id()


def _exporter(env: Mapping[str, str]) -> SpanExporter:
    kind = (env.get("OTEL_TRACES_EXPORTER") or "otlp").split(",")[0].strip().lower()
    if kind == "console":
        return ConsoleSpanExporter()
    if kind != "otlp":
        raise ValueError(
            f"OTEL_TRACES_EXPORTER={kind!r} is not supported: use otlp, console or none"
        )
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        return GrpcExporter()
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    raise ValueError(
        f"OTLP protocol {protocol!r} is not supported: use http/protobuf or grpc "
        "(OTEL_EXPORTER_OTLP_PROTOCOL)"
    )


class OtelSink:
    """Turns `SpanRecord`s into SDK spans, exported by a batch processor."""

    def __init__(self, provider: TracerProvider, ids: _PresetIds, capture_content: bool):
        self.provider = provider
        self.ids = ids
        self.capture_content = capture_content
        self.tracer = provider.get_tracer("everruns")

    @classmethod
    def from_env(cls, env: Mapping[str, str], exporter: SpanExporter | None = None) -> OtelSink:
        ids = _PresetIds()
        resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME") or "everruns"})
        provider = TracerProvider(resource=resource, id_generator=ids)
        provider.add_span_processor(BatchSpanProcessor(exporter or _exporter(env)))
        capture = env.get(CAPTURE_CONTENT, "").strip().lower() == "true"
        return cls(provider, ids, capture)

    def emit(self, span: SpanRecord) -> None:
        context = None
        if span.parent_id is not None:
            parent = api.SpanContext(
                span.trace_id, span.parent_id, is_remote=True, trace_flags=api.TraceFlags(1)
            )
            context = api.set_span_in_context(api.NonRecordingSpan(parent))
        links = [
            api.Link(api.SpanContext(t, s, is_remote=True, trace_flags=api.TraceFlags(1)))
            for t, s in span.links
        ]
        self.ids.trace, self.ids.span = span.trace_id, span.span_id
        started = self.tracer.start_span(
            span.name,
            context=context,
            kind=_KINDS[span.kind],
            attributes=_clean(span.attributes),
            links=links,
            start_time=int(span.start * 1e9),
        )
        self.ids.trace = self.ids.span = None
        if span.error is not None:
            started.set_status(api.Status(api.StatusCode.ERROR, span.error))
        started.end(end_time=int(span.end * 1e9))

    def flush(self, timeout_ms: int = 5000) -> bool:
        return self.provider.force_flush(timeout_ms)

    def shutdown(self) -> None:
        self.provider.shutdown()


def _clean(attributes: dict[str, Any]) -> dict[str, Any]:
    """OTel attributes are scalars or lists of scalars; None is dropped."""
    out: dict[str, Any] = {}
    for key, value in attributes.items():
        if value is None:
            continue
        out[key] = value if isinstance(value, str | bool | int | float | list) else str(value)
    return out
