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
    # input_tokens, output_tokens; cached_input_tokens when the provider read a cached
    # prefix; `estimated: True` when the server sent no usage and it was estimated here.
    usage: dict[str, int] = field(default_factory=dict)
    stop_reason: str | None = None
    model: str | None = None
    truncated: bool = False  # cut off at max_tokens (finish_reason length / max_tokens)


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


def estimate_text_tokens(text: str) -> int:
    """About 4 characters a token: the estimate used when a server reports no usage."""
    return (len(text) + 3) // 4


def estimate_usage(request: LLMRequest, output: str) -> dict[str, int]:
    """Usage estimated from the request sent and the text streamed back, marked so."""
    sent = request.system + json.dumps(request.messages, default=str)
    if request.tools:
        sent += json.dumps([t.parameters for t in request.tools]) + "".join(
            t.name + t.description for t in request.tools
        )
    return {
        "input_tokens": estimate_text_tokens(sent),
        "output_tokens": estimate_text_tokens(output),
        "estimated": True,
    }


def attempt_usage(
    usage: dict[str, Any], request: LLMRequest, streamed: str, *, billed: bool
) -> dict[str, Any]:
    """What an attempt that ended without an answer is charged: the tokens the server
    reported, with what it did not report estimated (`estimate_usage`) — input from the
    request, output from the text streamed so far. `billed`: the server may bill it (the
    request was sent and the answer begun or cut: a broken stream, a timeout, a cancel);
    otherwise (a refusal before any answer) only what the server reported."""
    if usage.get("input_tokens") or usage.get("output_tokens"):
        if streamed and not usage.get("output_tokens"):
            return {**usage, "output_tokens": estimate_text_tokens(streamed), "estimated": True}
        return dict(usage)
    if not (billed or streamed):
        return {}
    return estimate_usage(request, streamed)


def merge_name(current: str, fragment: str) -> str:
    """Join streamed tool-name fragments. Some servers (llama-cpp-python) repeat the whole
    name in every chunk; a fragment that repeats or extends what we have replaces it."""
    if not current or fragment.startswith(current):
        return fragment
    return current + fragment


def parse_arguments(raw: str) -> dict[str, Any]:
    """Tool-call arguments from the model's JSON text; invalid JSON is kept for the error."""
    if not raw or not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        return {INVALID_ARGUMENTS: f"{exc.msg} at position {exc.pos}: {raw[:200]}"}
    return value if isinstance(value, dict) else {INVALID_ARGUMENTS: f"not an object: {raw[:200]}"}
