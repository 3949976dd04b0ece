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
    parse_arguments,
    stream_with_idle_timeout,
)
from everruns.providers.sdk import SDKProvider, client_kwargs


def to_openai_messages(system: str, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    for m in messages:
        if m["role"] == "user":
            out.append({"role": "user", "content": m["content"]})
        elif m["role"] == "assistant":
            msg: dict[str, Any] = {"role": "assistant", "content": m.get("content")}
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
        params: dict[str, Any] = dict(request.model.parameters)
        if request.tools:
            params["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": t.name,
                        "description": t.description,
                        "parameters": t.parameters,
                    },
                }
                for t in request.tools
            ]
        create: Any = client.chat.completions.create
        stream = await create(
            model=request.model.name or "",
            messages=to_openai_messages(request.system, request.messages),
            stream=True,
            stream_options={"include_usage": True},
            **params,
        )
        text: list[str] = []
        calls: dict[int, dict[str, Any]] = {}
        finish: str | None = None
        usage: dict[str, int] = {}
        model_name: str | None = None
        chunk: Any
        try:
            async for chunk in stream_with_idle_timeout(stream, request.model.timeouts.stream_idle):
                model_name = chunk.model or model_name
                if chunk.usage is not None:
                    usage = {
                        "input_tokens": chunk.usage.prompt_tokens or 0,
                        "output_tokens": chunk.usage.completion_tokens or 0,
                    }
                for choice in chunk.choices or []:
                    delta = choice.delta
                    if delta is not None and delta.content:
                        text.append(delta.content)
                        on_delta(delta.content)
                    for tc in (delta.tool_calls if delta is not None else None) or []:
                        slot = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
                        if tc.id:
                            slot["id"] = tc.id
                        if tc.function is not None:
                            slot["name"] += tc.function.name or ""
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
        message: dict[str, Any] = {"role": "assistant", "content": "".join(text) or None}
        if calls:
            message["tool_calls"] = [
                {
                    "id": c["id"] or f"call_{request.step + 1}_{i}",
                    "name": c["name"],
                    "arguments": parse_arguments(c["arguments"]),
                }
                for i, c in sorted(calls.items())
            ]
        return LLMResponse(message=message, usage=usage, stop_reason=finish, model=model_name)
