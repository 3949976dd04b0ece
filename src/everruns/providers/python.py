"""The python provider: a Python function answers each LLM call.

`model: {provider: python, function: "mypkg.fake:respond"}` calls
`respond(request: ModelRequest)` (sync or async) for every LLM call of the run.
It returns text (`str`), tool calls (a list of `ToolCall` or `{"name", "arguments"}`
dicts), or a `ModelResponse`; it may raise `ProviderError` with an error class
(`rate_limited`, `overloaded`, `server_error`, `timeout`, ...) to fail the attempt
the way a real provider would. For deterministic offline agents, tests and demos:
unlike the scripted provider, the answer can depend on what the run has seen.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import inspect
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from everruns.providers.base import DeltaCallback, LLMRequest, LLMResponse, ProviderError
from everruns.providers.errors import RETRYABLE


@dataclass(frozen=True)
class ToolCall:
    """A tool call the function asks for. `id` defaults to `call_<step>_<n>`."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    id: str | None = None


@dataclass(frozen=True)
class ModelResponse:
    """A full answer: text and/or tool calls, and optionally the usage to account."""

    text: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    input_tokens: int | None = None
    output_tokens: int | None = None


@dataclass(frozen=True)
class ModelRequest:
    """What the model is asked: the conversation, the tools, and where the run is.

    `messages` are plain dicts (`role` user / assistant / tool, see providers/base.py);
    `tools` are `{"name", "description", "parameters"}` dicts; `step` is 1 for the
    run's first LLM answer; `attempt` counts retries of this step; `purpose` is
    `reason`, or `compaction` when the engine asks for a summary of old messages.
    """

    system: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    step: int
    attempt: int
    parameters: dict[str, Any]
    purpose: str = "reason"

    @property
    def last_message(self) -> dict[str, Any] | None:
        return self.messages[-1] if self.messages else None

    @property
    def last_tool_result(self) -> str | None:
        """The content of the newest tool result, if the last message is one."""
        last = self.last_message
        return str(last.get("content")) if last and last["role"] == "tool" else None

    @property
    def last_user_message(self) -> str | None:
        for message in reversed(self.messages):
            if message["role"] == "user":
                return str(message.get("content"))
        return None


Response = str | list[Any] | ModelResponse


def _estimate(text: str) -> int:
    return max(1, len(text) // 4)


def to_model_request(request: LLMRequest) -> ModelRequest:
    return ModelRequest(
        system=request.system,
        messages=[dict(m) for m in request.messages],
        tools=[
            {"name": t.name, "description": t.description, "parameters": t.parameters}
            for t in request.tools
        ],
        step=request.step + 1,
        attempt=request.attempt,
        parameters=dict(request.model.parameters),
        purpose=request.purpose,
    )


def _tool_call(value: Any, where: str) -> ToolCall:
    if isinstance(value, ToolCall):
        return value
    if isinstance(value, dict) and isinstance(value.get("name"), str):
        arguments = value.get("arguments") or {}
        if not isinstance(arguments, dict):
            raise TypeError(f"{where}: `arguments` must be a dict")
        return ToolCall(value["name"], arguments, value.get("id"))
    raise TypeError(f"{where}: expected a ToolCall or a {{'name', 'arguments'}} dict")


def to_llm_response(value: Any, request: ModelRequest, source: str) -> LLMResponse:
    """The engine's response from what the function returned (TypeError if unusable)."""
    if isinstance(value, str):
        value = ModelResponse(text=value)
    elif isinstance(value, list):
        value = ModelResponse(
            tool_calls=[_tool_call(v, f"{source} item {i}") for i, v in enumerate(value)]
        )
    elif not isinstance(value, ModelResponse):
        raise TypeError(
            f"{source} returned {type(value).__name__}; "
            "expected str, a list of tool calls, or everruns.testing.ModelResponse"
        )
    if value.text is None and not value.tool_calls:
        raise TypeError(f"{source} returned an empty answer (no text, no tool calls)")
    calls = [
        {"id": c.id or f"call_{request.step}_{i + 1}", "name": c.name, "arguments": c.arguments}
        for i, c in enumerate(value.tool_calls)
    ]
    message: dict[str, Any] = {"role": "assistant", "content": value.text}
    if calls:
        message["tool_calls"] = calls
    prompt = request.system + "".join(str(m.get("content") or "") for m in request.messages)
    usage = {
        "input_tokens": value.input_tokens if value.input_tokens is not None else _estimate(prompt),
        "output_tokens": value.output_tokens
        if value.output_tokens is not None
        else _estimate(value.text or str(calls)),
    }
    return LLMResponse(
        message=message,
        usage=usage,
        stop_reason="tool_use" if calls else "end_turn",
        model="python",
    )


def load_model_function(path: str) -> Callable[..., Any]:
    """Import `package.module:function` (from the working directory or PYTHONPATH).

    Only a Python function defined in that module qualifies, never an arbitrary
    callable re-exported there (`os:system`, `builtins:eval`)."""
    module_name, _, attr = path.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import module {module_name!r}: {exc}") from None
    obj = getattr(module, attr, None)
    if obj is None:
        raise ValueError(f"module {module_name!r} has no attribute {attr!r}")
    if not inspect.isfunction(obj) or obj.__module__ != module.__name__:
        raise ValueError(f"{path!r} is not a Python function defined in {module_name!r}")
    return obj


class PythonProvider:
    def __init__(self, function: Callable[..., Any], source: str):
        self.function = function
        self.source = source

    async def complete(self, request: LLMRequest, on_delta: DeltaCallback) -> LLMResponse:
        model_request = to_model_request(request)
        try:
            if inspect.iscoroutinefunction(self.function):
                value = await self.function(model_request)
            else:
                value = await asyncio.to_thread(functools.partial(self.function, model_request))
                if inspect.isawaitable(value):
                    value = await value
            response = to_llm_response(value, model_request, self.source)
        except ProviderError as exc:
            raise classified(exc) from None
        except Exception as exc:
            raise ProviderError(
                f"python model {self.source} raised {type(exc).__name__}: {exc}",
                error_class="bad_response",
                retryable=False,
            ) from None
        text = response.message.get("content")
        if text:
            on_delta(text)
        return response


def classified(error: ProviderError) -> ProviderError:
    """A raised error is retried only when its class is retryable (rate_limited,
    overloaded, server_error, timeout, connection, stream_broken)."""
    if error.error_class not in RETRYABLE and error.retryable:
        error.retryable = False
    return error
