"""Anthropic Messages API, streaming. SDK retries are off: the engine retries."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx2

from everruns.providers.base import (
    DeltaCallback,
    LLMRequest,
    LLMResponse,
    ProviderError,
    estimate_usage,
    parse_arguments,
    stream_with_idle_timeout,
)
from everruns.providers.options import split_parameters
from everruns.providers.sdk import SDKProvider, client_kwargs
from everruns.spec import ModelSpec, ToolChoiceName

DEFAULT_MAX_TOKENS = 4096


def tool_choice(model: ModelSpec) -> dict[str, Any] | None:
    """`model.tool_choice` in the Messages API's form (`required` is `any`)."""
    choice = model.tool_choice
    if choice is None:
        return None
    if isinstance(choice, ToolChoiceName):
        return {"type": "tool", "name": choice.name}
    return {"type": {"required": "any"}.get(choice, choice)}


CACHE_POINT = {"type": "ephemeral"}  # the 5-minute cache (`model.cache: auto`)
CACHE_POINT_1H = {"type": "ephemeral", "ttl": "1h"}  # `model.cache: 1h`


def start_usage(u: Any) -> dict[str, int]:
    """Usage from `message_start`. Anthropic counts cache reads and writes apart from
    `input_tokens`; we journal `input_tokens` as their sum and each part on its own key
    (reads, 5-minute writes, 1-hour writes) so that each is priced at its own rate."""
    read = getattr(u, "cache_read_input_tokens", 0) or 0
    written = getattr(u, "cache_creation_input_tokens", 0) or 0
    split = getattr(u, "cache_creation", None)
    written_1h = min(written, getattr(split, "ephemeral_1h_input_tokens", 0) or 0)
    usage = {
        "input_tokens": (u.input_tokens or 0) + read + written,
        "output_tokens": u.output_tokens or 0,
    }
    parts = {
        "cached_input_tokens": read,
        "cache_write_input_tokens": written - written_1h,
        "cache_write_1h_input_tokens": written_1h,
    }
    usage.update({key: n for key, n in parts.items() if n})
    return usage


def add_cache_breakpoints(
    params: dict[str, Any], messages: list[dict[str, Any]], point: dict[str, Any] = CACHE_POINT
) -> None:
    """Mark the stable prefix for Anthropic's prompt cache (3 of its 4 breakpoints): the
    system prompt, the last tool, and the last block of the conversation so far, so the
    next step of a long run re-reads everything up to here from the cache."""
    if isinstance(params.get("system"), str):
        params["system"] = [{"type": "text", "text": params["system"], "cache_control": point}]
    if params.get("tools"):
        params["tools"][-1] = {**params["tools"][-1], "cache_control": point}
    if messages and messages[-1]["content"]:
        blocks = messages[-1]["content"]
        blocks[-1] = {**blocks[-1], "cache_control": point}


def to_anthropic_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Our messages as Anthropic content blocks; tool results travel in user turns,
    and consecutive turns of one role are merged (the API wants them alternating)."""
    out: list[dict[str, Any]] = []

    def push(role: str, blocks: list[dict[str, Any]]) -> None:
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})

    for m in messages:
        if m["role"] == "user":
            push("user", [{"type": "text", "text": m["content"]}])
        elif m["role"] == "assistant":
            # Extended thinking goes back first and unchanged (with its signature): the API
            # requires it before the tool_use blocks of the turn it belongs to.
            blocks: list[dict[str, Any]] = [dict(b) for b in m.get("thinking") or []]
            if m.get("content"):
                blocks.append({"type": "text", "text": m["content"]})
            for tc in m.get("tool_calls") or []:
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": tc["id"],
                        "name": tc["name"],
                        "input": tc.get("arguments") or {},
                    }
                )
            push("assistant", blocks or [{"type": "text", "text": "(no answer)"}])
        elif m["role"] == "tool":
            push(
                "user",
                [
                    {
                        "type": "tool_result",
                        "tool_use_id": m["tool_call_id"],
                        "content": m["content"] or "",
                        "is_error": bool(m.get("is_error")),
                    }
                ],
            )
    return out


class AnthropicProvider(SDKProvider[anthropic.AsyncAnthropic]):
    sdk = anthropic
    default_key_env = "ANTHROPIC_API_KEY"

    def _new_client(self, key: str, timeout: httpx2.Timeout) -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(**client_kwargs(self.model, key, timeout))

    async def _complete(self, request: LLMRequest, on_delta: DeltaCallback) -> LLMResponse:
        client = self.client()
        params = split_parameters("anthropic", request.model.parameters)
        params.setdefault("max_tokens", DEFAULT_MAX_TOKENS)
        if request.system:
            params["system"] = request.system
        if request.tools:
            params["tools"] = [
                {"name": t.name, "description": t.description, "input_schema": t.parameters}
                for t in request.tools
            ]
            choice = tool_choice(request.model)
            if choice is not None:
                params["tool_choice"] = choice
        messages = to_anthropic_messages(request.messages)
        if request.model.cache != "off":
            point = CACHE_POINT_1H if request.model.cache == "1h" else CACHE_POINT
            add_cache_breakpoints(params, messages, point)
        create: Any = client.messages.create
        stream = await create(
            model=request.model.name or "",
            messages=messages,
            stream=True,
            **params,
        )
        text: list[str] = []
        blocks: dict[int, dict[str, Any]] = {}
        thinking: dict[int, dict[str, Any]] = {}  # extended thinking, kept to send back
        usage: dict[str, int] = {"input_tokens": 0, "output_tokens": 0}
        stop_reason: str | None = None
        finished = False
        model_name: str | None = None
        event: Any
        async for event in stream_with_idle_timeout(stream, request.model.timeouts.stream_idle):
            kind = event.type
            if kind == "message_start":
                model_name = event.message.model
                usage = start_usage(event.message.usage)
            elif kind == "content_block_start":
                block = event.content_block
                if block.type == "tool_use":
                    blocks[event.index] = {"id": block.id, "name": block.name, "json": ""}
                elif block.type == "thinking":
                    thinking[event.index] = {"type": "thinking", "thinking": "", "signature": ""}
                elif block.type == "redacted_thinking":
                    thinking[event.index] = {"type": "redacted_thinking", "data": block.data}
            elif kind == "content_block_delta":
                delta = event.delta
                if delta.type == "text_delta":
                    text.append(delta.text)
                    on_delta(delta.text)
                elif delta.type == "input_json_delta" and event.index in blocks:
                    blocks[event.index]["json"] += delta.partial_json
                elif delta.type == "thinking_delta" and event.index in thinking:
                    thinking[event.index]["thinking"] += delta.thinking
                elif delta.type == "signature_delta" and event.index in thinking:
                    thinking[event.index]["signature"] += delta.signature
            elif kind == "message_delta":
                stop_reason = event.delta.stop_reason or stop_reason
                if event.usage is not None and event.usage.output_tokens is not None:
                    usage["output_tokens"] = event.usage.output_tokens
            elif kind == "message_stop":
                finished = True
            elif kind == "error":  # an error event inside the stream
                raise ProviderError(str(getattr(event, "error", event)), error_class="overloaded")
        if not finished:
            raise ProviderError(
                "the stream ended before message_stop (truncated)",
                error_class="stream_broken",
                retryable=True,
                usage=usage,
            )
        if stop_reason == "refusal":
            raise ProviderError(
                "the model refused to answer (stop_reason refusal)",
                error_class="content_refused",
                retryable=False,
                usage=usage,
            )
        if not usage["input_tokens"] and not usage["output_tokens"]:
            streamed = "".join(text) + "".join(b["name"] + b["json"] for b in blocks.values())
            usage = estimate_usage(request, streamed)  # the server sent none
        message: dict[str, Any] = {"role": "assistant", "content": "".join(text) or None}
        if thinking:
            message["thinking"] = [b for _, b in sorted(thinking.items())]
        if blocks:
            message["tool_calls"] = [
                {"id": b["id"], "name": b["name"], "arguments": parse_arguments(b["json"])}
                for _, b in sorted(blocks.items())
            ]
        return LLMResponse(
            message=message,
            usage=usage,
            stop_reason=stop_reason,
            model=model_name,
            truncated=stop_reason == "max_tokens",
        )
