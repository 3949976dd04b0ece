"""The provider protocol: one internal message model for every LLM.

Messages are plain dicts:
- `{"role": "user", "content": str}`
- `{"role": "assistant", "content": str | None, "tool_calls": [{"id", "name", "arguments"}]}`
- `{"role": "tool", "tool_call_id": str, "name": str, "content": str, "is_error": bool}`
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from everruns.errors import ProviderError as ProviderError  # defined in everruns.errors
from everruns.spec import ModelSpec

DeltaCallback = Callable[[str], None]
T = TypeVar("T")
# Key under which unparseable tool-call arguments are kept, so the tool call
# fails with a clear error the model can see instead of crashing the run.
INVALID_ARGUMENTS = "__invalid_arguments__"


@dataclass(frozen=True)
class ToolSchema:
    name: str
    description: str
    parameters: dict[str, Any]


@dataclass(frozen=True)
class LLMRequest:
    model: ModelSpec
    system: str
    messages: list[dict[str, Any]]
    tools: list[ToolSchema]
    step: int  # how many LLM answers the run has had so far
    attempt: int
    purpose: str = "reason"  # reason | compaction


@dataclass
class LLMResponse:
    message: dict[str, Any]
    usage: dict[str, int] = field(default_factory=dict)
    stop_reason: str | None = None
    model: str | None = None


class Provider(Protocol):
    async def complete(self, request: LLMRequest, on_delta: DeltaCallback) -> LLMResponse: ...


async def stream_with_idle_timeout(
    stream: AsyncIterator[T], idle: float | None
) -> AsyncIterator[T]:
    """Yield from a stream, failing with `stream_broken` when no item comes for `idle` s."""
    iterator = stream.__aiter__()
    while True:
        try:
            if idle:
                item = await asyncio.wait_for(iterator.__anext__(), idle)
            else:
                item = await iterator.__anext__()
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise ProviderError(
                f"the stream stalled: nothing received for {idle:g}s",
                error_class="stream_broken",
                retryable=True,
            ) from None
        yield item


def parse_arguments(raw: str) -> dict[str, Any]:
    """Tool-call arguments from the model's JSON text; invalid JSON is kept for the error."""
    if not raw or not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        return {INVALID_ARGUMENTS: f"{exc.msg} at position {exc.pos}: {raw[:200]}"}
    return value if isinstance(value, dict) else {INVALID_ARGUMENTS: f"not an object: {raw[:200]}"}
