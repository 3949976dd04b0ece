"""A `ModelRequest` answered by any configured model: how the fault injector and replay's live
fallback wrap real models."""

from __future__ import annotations

from everruns.providers import get_provider
from everruns.providers.base import LLMRequest, ToolSchema
from everruns.providers.python import ModelRequest, ModelResponse, ToolCall
from everruns.spec import ModelSpec


async def ask_model(model: ModelSpec, request: ModelRequest) -> ModelResponse:
    """The other direction: a `ModelRequest` answered by any configured model (the testing
    plugin's fault injector and replay's live fallback wrap real models this way)."""
    response = await get_provider(model).complete(
        LLMRequest(
            model=model,
            system=request.system,
            messages=request.messages,
            tools=[ToolSchema(t["name"], t["description"], t["parameters"]) for t in request.tools],
            step=request.step - 1,
            attempt=request.attempt,
            purpose=request.purpose,
        ),
        lambda _text: None,
    )
    message = response.message
    return ModelResponse(
        text=message.get("content"),
        tool_calls=[
            ToolCall(c["name"], c.get("arguments") or {}, c["id"])
            for c in message.get("tool_calls") or []
        ],
        input_tokens=response.usage.get("input_tokens"),
        output_tokens=response.usage.get("output_tokens"),
    )
