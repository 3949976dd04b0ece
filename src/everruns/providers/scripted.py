"""The scripted provider: answers from the spec, in order. For tests and offline demos.

Response k answers the run's k-th LLM step, so a call repeated after a crash
gets the same answer: scripted runs are deterministic across crashes.
"""

from __future__ import annotations

import asyncio
import re

from everruns.engine import crashpoints
from everruns.providers.base import DeltaCallback, LLMRequest, LLMResponse, ProviderError


def _chunks(text: str) -> list[str]:
    return re.findall(r"\S+\s*|\s+", text) or [text]


def _estimate_tokens(text: str) -> int:
    return max(1, len(text) // 4)


def _summary(request: LLMRequest) -> LLMResponse:
    """A deterministic stand-in summary: the first line of each summarized message."""
    crashpoints.hit("compaction.mid")
    text = str(request.messages[0]["content"]) if request.messages else ""
    lines = [line[:160] for line in text.split("\n\n") if line.strip()]
    summary = "Summary of earlier work:\n" + "\n".join(
        f"- {line.splitlines()[0]}" for line in lines
    )
    usage = {"input_tokens": _estimate_tokens(text), "output_tokens": _estimate_tokens(summary)}
    return LLMResponse(
        message={"role": "assistant", "content": summary},
        usage=usage,
        stop_reason="end_turn",
        model="scripted",
    )


def _answered_before(request: LLMRequest) -> bool:
    """Whether the run already finished once (a final answer before the last message)."""
    return any(m["role"] == "assistant" and not m.get("tool_calls") for m in request.messages[:-1])


def _exhausted(request: LLMRequest, scripted: int) -> LLMResponse:
    """The answer to a follow-up message after the script ended: a clear notice, journaled
    with stop reason `script_exhausted`, so the run's earlier result stands."""
    text = (
        f"script_exhausted: the scripted model has no response for step {request.step + 1} "
        f"(only {scripted} responses are scripted); the earlier result stands"
    )
    return LLMResponse(
        message={"role": "assistant", "content": text},
        usage={"input_tokens": 0, "output_tokens": 0},
        stop_reason="script_exhausted",
        model="scripted",
    )


class ScriptedProvider:
    async def complete(self, request: LLMRequest, on_delta: DeltaCallback) -> LLMResponse:
        if request.purpose == "compaction":
            return _summary(request)
        responses = request.model.responses or []
        if request.step >= len(responses):
            if _answered_before(request):
                return _exhausted(request, len(responses))
            raise ProviderError(
                f"scripted provider has no response for step {request.step + 1}: "
                f"only {len(responses)} responses are scripted",
                error_class="script_exhausted",
                retryable=False,
            )
        scripted = responses[request.step]
        if scripted.delay:
            await asyncio.sleep(scripted.delay / 2)
        crashpoints.hit("llm.mid")
        # A text answer streams its deltas over the second half of the delay, like a model.
        failing = scripted.error is not None and (
            scripted.error_times is None or request.attempt <= scripted.error_times
        )
        chunks = _chunks(scripted.text) if scripted.text and not failing else []
        if scripted.delay and not chunks:
            await asyncio.sleep(scripted.delay / 2)
        if failing:
            from everruns.providers.errors import RETRYABLE

            assert scripted.error is not None
            raise ProviderError(
                scripted.error,
                error_class=scripted.error_class,
                retryable=scripted.error_class in RETRYABLE,
            )
        pause = scripted.delay / 2 / len(chunks) if chunks else 0.0
        for chunk in chunks:
            on_delta(chunk)
            await asyncio.sleep(pause)
        tool_calls = [
            {
                "id": tc.id or f"call_{request.step + 1}_{i + 1}",
                "name": tc.name,
                "arguments": tc.arguments,
            }
            for i, tc in enumerate(scripted.tool_calls or [])
        ]
        message: dict = {"role": "assistant", "content": scripted.text}
        if tool_calls:
            message["tool_calls"] = tool_calls
        if scripted.usage is not None:
            usage = scripted.usage.model_dump(exclude_defaults=True)
            usage.setdefault("input_tokens", 0)
            usage.setdefault("output_tokens", 0)
        else:
            prompt = request.system + "".join(str(m.get("content") or "") for m in request.messages)
            usage = {
                "input_tokens": _estimate_tokens(prompt),
                "output_tokens": _estimate_tokens(scripted.text or str(tool_calls)),
            }
        return LLMResponse(
            message=message,
            usage=usage,
            stop_reason="tool_use" if tool_calls else "end_turn",
            model="scripted",
        )
