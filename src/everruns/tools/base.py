"""The tool protocol shared by every kind of tool."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from everruns.errors import ToolError as ToolError  # defined in everruns.errors
from everruns.providers.base import ToolSchema
from everruns.spec import ToolRateLimit, ToolRetry


@dataclass(frozen=True)
class ToolContext:
    """What a tool knows about the call it serves.

    `tool_call_id` is the model's id of the call being served; the journal's tool
    events carry the same value as `call_id`. `idempotency_key` is the same on every
    attempt of one tool call, so an idempotent tool can pass it to the API it calls
    and never act twice.
    """

    run_id: str
    tool_call_id: str
    idempotency_key: str
    attempt: int
    workspace: Path | None = None  # the run's workspace directory, when it has one
    notes: tuple[str, ...] = ()  # the run's progress notes so far
    agent: str | None = None  # the run's agent name (memory is kept per agent)
    store: Any = None  # the engine's Store, for built-ins that keep state across runs
    # W3C trace context of this call's span ({"traceparent": ...}; empty when tracing is
    # off): send it along with requests so the callee's spans join the run's trace.
    trace: dict[str, str] = field(default_factory=dict)
    on_progress: Callable[[dict[str, Any]], None] | None = None  # set by the engine

    def progress(self, done: float, total: float | None = None, note: str = "") -> None:
        """Report how far the call got ("412 of 10,000 records"): streamed live to
        watchers; the latest value is journaled with the call's result."""
        if self.on_progress is not None:
            value: dict[str, Any] = {"done": done, "total": total}
            if note:
                value["note"] = note
            self.on_progress(value)


@dataclass(frozen=True)
class SleepRequest:
    """Returned by a tool to park the run durably until `until` (epoch seconds)."""

    until: float
    reason: str = "sleep"


@dataclass(frozen=True)
class SpawnRequest:
    """Returned by the spawn tool: the engine creates the child run (idempotently)."""

    input: str
    agent: str | None = None
    spec: dict[str, Any] | None = None


@dataclass(frozen=True)
class WaitRequest:
    """Returned by the wait tool: park durably until the child runs finish."""

    run_ids: tuple[str, ...]
    mode: str = "all"  # all | any


@dataclass(frozen=True)
class ToolOutput:
    """A tool result with side data the journal keeps (a progress note)."""

    output: Any
    note: str | None = None


Invoke = Callable[[dict[str, Any], ToolContext], Awaitable[Any]]


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]
    effect: str
    invoke: Invoke
    timeout: float | None = None
    max_output: int | None = 20_000  # characters the model sees; the journal keeps all
    uses_workspace: bool = False
    retry: ToolRetry | None = None  # the spec entry's `retry:` block
    rate_limit: ToolRateLimit | None = None  # the spec entry's fleet-wide `rate_limit:`

    @property
    def schema(self) -> ToolSchema:
        return ToolSchema(self.name, self.description, self.parameters)


def render_output(value: Any) -> str:
    """Tool results reach the model as text; structured values become JSON."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return str(value)
