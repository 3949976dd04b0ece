"""A test tool that reports the W3C trace context the engine handed it (`ctx.trace`)."""

from __future__ import annotations

from everruns import ToolContext, tool


@tool(effect="idempotent")
def show_trace(ctx: ToolContext) -> str:
    """Return the traceparent of this call's span (empty when tracing is off)."""
    return ctx.trace.get("traceparent", "")
