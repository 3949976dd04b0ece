"""A finished span and where it goes: shared by `tracing.py` (which builds them from
the journal) and `otel.py` (which hands them to the OpenTelemetry SDK)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

CAPTURE_CONTENT = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"


@dataclass
class SpanRecord:
    """One finished span, ready to export (times in seconds since the epoch)."""

    name: str
    trace_id: int
    span_id: int
    parent_id: int | None
    start: float
    end: float
    attributes: dict[str, Any]
    error: str | None = None  # set: the span's status is ERROR with this description
    links: list[tuple[int, int]] = field(default_factory=list)  # (trace_id, span_id)
    kind: str = "internal"  # internal | client | server


class Sink(Protocol):
    """Where finished spans go (the SDK exporter in `engine/otel.py`)."""

    capture_content: bool

    def emit(self, span: SpanRecord) -> None: ...

    def flush(self, timeout_ms: int = 5000) -> bool: ...
