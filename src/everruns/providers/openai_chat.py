"""OpenAI Chat Completions (and any OpenAI-compatible server), streaming.

The SDK's own retries are off (`max_retries=0`): the engine is the only layer
that retries, so back-off, `Retry-After` and budgets are accounted in one place.
"""

from __future__ import annotations

import json
import os
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
from everruns.providers.errors import classify_status
from everruns.spec import ModelSpec


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


def _api_key(model: ModelSpec) -> str:
    env = model.api_key_env or ("OPENAI_API_KEY" if model.provider == "openai" else None)
    if env is None:
        return "not-needed"
    key = os.environ.get(env)
    if not key:
        raise ProviderError(
            f"environment variable {env} (the API key for {model.label}) is not set",
            error_class="auth",
            retryable=False,
        )
    return key


def _translate(exc: Exception) -> ProviderError:
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, openai.APITimeoutError):
        return ProviderError(f"timed out: {exc}", error_class="timeout", retryable=True)
    if isinstance(exc, openai.APIConnectionError):
        return ProviderError(f"connection failed: {exc}", error_class="connection", retryable=True)
    if isinstance(exc, openai.APIStatusError):
        body = exc.body if isinstance(exc.body, dict) else {}
        err = body.get("error", body) if isinstance(body, dict) else {}
        # Both: `code` (e.g. context_length_exceeded) is the machine-readable signal,
        # and the message text alone does not always say so.
        error_type = (
            " ".join(str(v) for v in (err.get("type"), err.get("code")) if v) or None
            if isinstance(err, dict)
            else None
        )
        message = (err.get("message") if isinstance(err, dict) else None) or str(exc)
        return classify_status(exc.status_code, message, exc.response.headers, error_type)
    if isinstance(exc, httpx2.TransportError | json.JSONDecodeError | openai.APIError):
        return ProviderError(
            f"the stream broke: {type(exc).__name__}: {exc}",
            error_class="stream_broken",
            retryable=True,
        )
    raise exc


class OpenAIChatProvider:
    def __init__(self, model: ModelSpec):
        t = model.timeouts
        self.model = model
        self._client: openai.AsyncOpenAI | None = None
        self._timeout = httpx2.Timeout(t.read, connect=t.connect)

    def _get_client(self) -> openai.AsyncOpenAI:
        if self._client is None:
            self._client = openai.AsyncOpenAI(
                api_key=_api_key(self.model),
                base_url=self.model.base_url,
                max_retries=0,
                timeout=self._timeout,
            )
        return self._client

    async def complete(self, request: LLMRequest, on_delta: DeltaCallback) -> LLMResponse:
        try:
            return await self._complete(request, on_delta)
        except Exception as exc:
            raise _translate(exc) from None

    async def _complete(self, request: LLMRequest, on_delta: DeltaCallback) -> LLMResponse:
        client = self._get_client()
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
