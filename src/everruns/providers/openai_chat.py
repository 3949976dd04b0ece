"""OpenAI Chat Completions (and any OpenAI-compatible server), streaming.

The SDK's own retries are off (`max_retries=0`): the engine is the only layer
that retries, so back-off, `Retry-After` and budgets are accounted in one place.
"""

from __future__ import annotations

import json
from typing import Any

import httpx2
import openai

from everruns.providers.base import (
    DeltaCallback,
    LLMRequest,
    LLMResponse,
    ProviderError,
    ToolSchema,
    estimate_usage,
    merge_name,
    parse_arguments,
    stream_with_idle_timeout,
)
from everruns.providers.options import split_parameters
from everruns.providers.sdk import SDKProvider, client_kwargs
from everruns.spec import ModelSpec, ToolChoiceName


def tool_options(model: ModelSpec, tools: list[ToolSchema]) -> dict[str, Any]:
    """`tools` and `tool_choice` for the request.

    A named choice is the object form on OpenAI itself; OpenAI-compatible servers
    (llama-server reads only the string form) get `required` with just that tool offered.
    """
    choice = model.tool_choice
    if not tools:
        return {}
    offered = tools
    out: dict[str, Any] = {}
    if isinstance(choice, ToolChoiceName):
        if model.provider == "openai":
            out["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
        else:
            offered = [t for t in tools if t.name == choice.name] or tools
            out["tool_choice"] = "required"
    elif choice is not None:
        out["tool_choice"] = choice
    out["tools"] = [
        {
            "type": "function",
            "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
        }
        for t in offered
    ]
    return out


def sends_reasoning(model: ModelSpec) -> bool:
    """OpenAI-compatible servers take `reasoning_content` back; OpenAI itself returns none
    in Chat Completions and is not sent any."""
    return model.provider != "openai" or bool(model.base_url)


def to_openai_messages(
    system: str, messages: list[dict[str, Any]], reasoning: bool = False
) -> list[dict[str, Any]]:
    """Our messages in Chat Completions form. With `reasoning`, the reasoning text of the
    assistant's tool-call turns since the last user message goes back as
    `reasoning_content` (DeepSeek's thinking mode requires it within a turn; llama.cpp and
    vLLM read it into the template); earlier turns' reasoning is dropped, as they ask."""
    out: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    turn = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=-1)
    for position, m in enumerate(messages):
        if m["role"] == "user":
            out.append({"role": "user", "content": m["content"]})
        elif m["role"] == "assistant":
            # Tool-call-only answers carry "" rather than null: llama-cpp-python's server
            # answers null with HTTP 500, and every tested server accepts "".
            msg: dict[str, Any] = {"role": "assistant", "content": m.get("content") or ""}
            if m.get("tool_calls"):
                msg["tool_calls"] = [
                    {
                        "id": tc["id"],
                        "type": "function",
                        "function": {
                            "name": tc["name"],
                            "arguments": json.dumps(tc.get("arguments") or {}),
                        },
                    }
                    for tc in m["tool_calls"]
                ]
                if reasoning and position > turn and m.get("reasoning"):
                    msg["reasoning_content"] = m["reasoning"]
            out.append(msg)
        elif m["role"] == "tool":
            out.append(
                {"role": "tool", "tool_call_id": m["tool_call_id"], "content": m["content"] or ""}
            )
    return out


class OpenAIChatProvider(SDKProvider[openai.AsyncOpenAI]):
    sdk = openai

    def _default_env(self) -> str | None:
        return "OPENAI_API_KEY" if self.model.provider == "openai" else None

    def _new_client(self, key: str, timeout: httpx2.Timeout) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(**client_kwargs(self.model, key, timeout))

    async def _complete(self, request: LLMRequest, on_delta: DeltaCallback) -> LLMResponse:
        client = self.client()
        params = split_parameters(request.model.provider, request.model.parameters)
        params.update(tool_options(request.model, request.tools))
        create: Any = client.chat.completions.create
        stream = await create(
            model=request.model.name or "",
            messages=to_openai_messages(
                request.system, request.messages, sends_reasoning(request.model)
            ),
            stream=True,
            stream_options={"include_usage": True},
            **params,
        )
        text: list[str] = []
        reasoning: list[str] = []
        calls: dict[int, dict[str, Any]] = {}
        finish: str | None = None
        usage: dict[str, int] = {}
        model_name: str | None = None
        chunk: Any
        try:
            async for chunk in stream_with_idle_timeout(stream, request.model.timeouts.stream_idle):
                model_name = chunk.model or model_name
                if chunk.usage is not None:
                    usage = _usage(chunk.usage)
                for choice in chunk.choices or []:
                    delta = choice.delta
                    if delta is not None and delta.content:
                        text.append(delta.content)
                        on_delta(delta.content)
                    # Reasoning text of llama.cpp, DeepSeek (`reasoning_content`) and newer
                    # vLLM / OpenRouter (`reasoning`): journaled, sent back by
                    # to_openai_messages within the turn.
                    reasoning_part = _reasoning(delta)
                    if reasoning_part:
                        reasoning.append(reasoning_part)
                    for position, tc in enumerate(
                        (delta.tool_calls if delta is not None else None) or []
                    ):
                        # Some servers omit `index`; ids may come only in the first chunk.
                        index = tc.index if tc.index is not None else position
                        slot = calls.setdefault(index, {"id": None, "name": "", "arguments": ""})
                        slot["id"] = slot["id"] or tc.id
                        if tc.function is not None:
                            slot["name"] = merge_name(slot["name"], tc.function.name or "")
                            slot["arguments"] += tc.function.arguments or ""
                    if choice.finish_reason:
                        finish = choice.finish_reason
        except openai.APIConnectionError as exc:
            # The SDK wraps transport errors *inside* an open stream (the peer hangs up
            # mid-answer, a read timeout) as APIConnectionError/APITimeoutError. The
            # response had begun, so the stream died: `stream_broken`, as for Anthropic.
            cause = exc.__cause__ or exc
            raise ProviderError(
                f"the stream broke: {type(cause).__name__}: {cause}",
                error_class="stream_broken",
                retryable=True,
                usage=usage,
            ) from None
        if finish is None:
            raise ProviderError(
                "the stream ended without a finish reason (truncated)",
                error_class="stream_broken",
                retryable=True,
                usage=usage,
            )
        if finish == "content_filter":
            raise ProviderError(
                "the provider refused the content (content_filter)",
                error_class="content_refused",
                retryable=False,
                usage=usage,
            )
        if not usage:  # the server sent none: estimate, marked as such
            streamed = "".join(text) + "".join(c["name"] + c["arguments"] for c in calls.values())
            usage = estimate_usage(request, streamed)
        message: dict[str, Any] = {"role": "assistant", "content": "".join(text) or None}
        if reasoning:
            message["reasoning"] = "".join(reasoning)
        if calls:
            message["tool_calls"] = [
                {
                    "id": c["id"] or f"call_{request.step + 1}_{i}",
                    "name": c["name"],
                    "arguments": parse_arguments(c["arguments"]),
                }
                for i, c in sorted(calls.items())
            ]
        return LLMResponse(
            message=message,
            usage=usage,
            stop_reason=finish,
            model=model_name,
            truncated=finish == "length",
        )


def _reasoning(delta: Any) -> str | None:
    for name in ("reasoning_content", "reasoning"):
        part = getattr(delta, name, None) if delta is not None else None
        if isinstance(part, str) and part:
            return part
    return None


def _usage(raw: Any) -> dict[str, int]:
    usage = {
        "input_tokens": raw.prompt_tokens or 0,
        "output_tokens": raw.completion_tokens or 0,
    }
    details = getattr(raw, "prompt_tokens_details", None)
    cached = getattr(details, "cached_tokens", None) if details is not None else None
    if cached:
        usage["cached_input_tokens"] = int(cached)
    return usage
