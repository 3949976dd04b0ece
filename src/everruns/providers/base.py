"""The provider protocol: one internal message model for every LLM.

Messages are plain dicts:
- `{"role": "user", "content": str}`
- `{"role": "assistant", "content": str | None, "tool_calls": [{"id", "name", "arguments"}]}`
- `{"role": "tool", "tool_call_id": str, "name": str, "content": str, "is_error": bool}`
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from everruns.spec import ModelSpec

DeltaCallback = Callable[[str], None]


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


@dataclass
class LLMResponse:
    message: dict[str, Any]
    usage: dict[str, int] = field(default_factory=dict)
    stop_reason: str | None = None
    model: str | None = None


class ProviderError(Exception):
    """A failed LLM call, classified so the engine can decide to retry or fail."""

    def __init__(
        self,
        message: str,
        *,
        error_class: str = "server_error",
        retryable: bool = True,
        retry_after: float | None = None,
        usage: dict[str, int] | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.error_class = error_class
        self.retryable = retryable
        self.retry_after = retry_after
        self.usage = usage or {}


class Provider(Protocol):
    async def complete(self, request: LLMRequest, on_delta: DeltaCallback) -> LLMResponse: ...
