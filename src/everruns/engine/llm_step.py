"""The LLM step: one model call (`reason`) and the summary call of a compaction.

Chooses the model (fallbacks past open circuit breakers), waits for rate limits,
journals `llm.started`, calls the provider and journals the answer — deferred, so it
is committed with the next atom's start — or the failure with its retry time.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from everruns import metrics
from everruns.core.backoff import backoff_delay
from everruns.core.context import CONTINUE_PROMPT, context_tokens, model_view
from everruns.core.decide import Compact, Fail, Reason, Wait
from everruns.core.events import EventType
from everruns.core.state import State
from everruns.engine.budgets import TreeBudget
from everruns.engine.keys import stored_key
from everruns.engine.models import (
    acquire_rate_limits,
    breaker_key,
    candidates,
    choose_model,
)
from everruns.engine.runlog import RunLog
from everruns.providers import LLMRequest, ProviderError, get_provider
from everruns.providers.base import attempt_usage, estimate_usage
from everruns.providers.errors import BREAKER_CLASSES
from everruns.providers.pricing import price_for, priced
from everruns.providers.sdk import classify_unexpected
from everruns.settings import Settings
from everruns.spec import AgentSpec, ModelSpec, Pricing
from everruns.store import Store
from everruns.tools.base import Tool

# Failures after which the provider may have billed the attempt although it reported no
# usage: the answer had begun (or the request was being answered) when it stopped.
BILLED_CLASSES = frozenset({"stream_broken", "timeout", "content_refused"})

COMPACTION_PROMPT = (
    "You compress the earlier part of an agent's conversation so it can continue within its "
    "context window. Write a faithful, dense summary: the task, decisions made, facts learned "
    "(with sources), tool results that still matter, open questions and next steps. Keep "
    "identifiers, numbers, file names and URLs exact. Do not invent anything."
)


class LLMStep:
    """Model calls of one run. `tools` is read at each call (MCP tools join it at start)."""

    def __init__(
        self,
        log: RunLog,
        store: Store,
        settings: Settings,
        spec: AgentSpec,
        tools: dict[str, Tool],
        origin: str,
    ):
        self.log = log
        self.store = store
        self.settings = settings
        self.spec = spec
        self.tools = tools
        self.origin = origin
        self.budget = TreeBudget(log, store, spec)

    async def reason(self, atom: Reason) -> Wait | Fail | None:
        """One LLM call. Returns a Wait when no model may be called yet, a Fail when a
        tree budget (the run's or an ancestor's) is spent."""
        over = await self.budget.check()
        if over is not None:
            return over
        state = self.log.state
        retry = self.spec.retry
        choice = await choose_model(self.store, self.spec)
        if choice.model is None:
            assert choice.wake_at is not None
            return Wait(until=choice.wake_at, reason="circuit_breakers_open")
        model = choice.model
        previous = state.model or self.spec.model.label
        if model.label != previous:
            await self.log.append(
                EventType.LLM_FALLBACK,
                {
                    "from": previous,
                    "to": model.label,
                    "reason": "breaker_open" if choice.skipped else "recovered",
                    "skipped": list(choice.skipped),
                },
            )
        state = self.log.state
        messages = model_view(state)
        if atom.continuation:
            messages.append({"role": "user", "content": CONTINUE_PROMPT})
        estimate = context_tokens(self.spec.system_prompt, state)
        if self.settings.rate_limits_for(model):
            await self.log.flush()  # acquiring may sleep: what is done must be durable first
        wait = await acquire_rate_limits(
            self.store, self.settings, model, estimate, max_sleep=retry.durable_wait_after
        )
        if wait:
            return Wait(until=time.time() + wait, reason="rate_limited")
        await self.log.append(
            EventType.LLM_STARTED,
            {"attempt": atom.attempt, "step": self.log.state.steps + 1, "model": model.label},
        )
        request = LLMRequest(
            model=model,
            system=self.spec.system_prompt,
            messages=messages,
            tools=[t.schema for t in self.tools.values()],
            step=self.log.state.steps,
            attempt=atom.attempt,
        )

        streamed: list[str] = []  # what the attempt is charged for if it ends unanswered
        ttft = metrics.first_token(model.label)

        def on_delta(text: str) -> None:
            streamed.append(text)
            ttft()
            self.log.publish_ephemeral("llm.delta", {"attempt": atom.attempt, "text": text})

        price = price_for(model, self.settings.prices)
        try:
            provider = get_provider(model, await self._key(model))
            response = await asyncio.wait_for(
                provider.complete(request, on_delta), model.timeouts.total
            )
        except asyncio.CancelledError:
            # A cancel or a shutdown stops the call: the worker charges it with the run's
            # next append (run.cancelled, or the flush before release). A lost lease
            # commits nothing; the next holder charges the attempt as lost.
            usage = attempt_usage({}, request, "".join(streamed), billed=True)
            self.log.carry(
                EventType.LLM_CHARGED,
                {
                    "attempt": atom.attempt,
                    "model": model.label,
                    "reason": "cancelled",
                    "usage": priced(usage, model, price),
                },
            )
            raise
        except Exception as exc:
            if isinstance(exc, TimeoutError):
                exc = ProviderError(
                    f"no complete answer within {model.timeouts.total:g}s (timeouts.total)",
                    error_class="timeout",
                )
            elif not isinstance(exc, ProviderError):
                # Building or sending the request failed in a way nobody classified:
                # journal it and fail the run, never a crash (and a crash loop).
                exc = classify_unexpected(exc)
            billed = exc.status is None and exc.error_class in BILLED_CLASSES
            exc.usage = attempt_usage(exc.usage, request, "".join(streamed), billed=billed)
            await self._record_failure(atom, model, exc, price, estimate)
            return None
        usage = priced(response.usage, model, price)
        if not model.offline:
            await self.store.record_outcome(
                breaker_key(model),
                ok=True,
                threshold=retry.breaker_threshold,
                cooldown=retry.breaker_cooldown,
            )
            await self._correct_rate(model, estimate, usage)
        await self.log.append(
            EventType.LLM_COMPLETED,
            defer=True,  # committed with the next atom's start (decided at once)
            data={
                "attempt": atom.attempt,
                "message": response.message,
                "usage": usage,
                "model": response.model or model.label,
                "stop_reason": response.stop_reason,
                **({"truncated": True} if response.truncated else {}),
                **({"continuation": True} if atom.continuation else {}),
            },
        )
        return None

    async def compact(self, atom: Compact) -> None:
        """Replace messages[:until] by a model-written summary (the journal keeps all)."""
        await self.log.append(
            EventType.COMPACTION_STARTED, {"until": atom.until, "reason": atom.reason}
        )
        state = self.log.state
        model = self.spec.context.summary_model or self.spec.model
        older = state.messages[state.compacted_until : atom.until]
        text = "\n\n".join(_render_message(m) for m in older)
        if state.summary:
            text = f"Earlier summary:\n{state.summary}\n\nThen:\n{text}"
        request = LLMRequest(
            model=model,
            system=COMPACTION_PROMPT,
            messages=[{"role": "user", "content": text}],
            tools=[],
            step=state.steps,
            attempt=1,
            purpose="compaction",
        )
        price = price_for(model, self.settings.prices)
        try:
            provider = get_provider(model, await self._key(model))
            response = await asyncio.wait_for(
                provider.complete(request, lambda _t: None), model.timeouts.total
            )
        except (ProviderError, TimeoutError) as exc:
            message = getattr(exc, "message", None) or "timed out"
            await self.log.fail("compaction_failed", f"could not compact the context: {message}")
            return
        usage = priced(response.usage, model, price)
        await self.log.append(
            EventType.CONTEXT_COMPACTED,
            {
                "until": atom.until,
                "summary": response.message.get("content") or "",
                "usage": usage,
                "model": model.label,
            },
        )

    async def _key(self, model: ModelSpec) -> str | None:
        return await stored_key(self.store, self.settings, self.origin, model)

    async def _correct_rate(self, model: ModelSpec, estimate: int, usage: dict[str, Any]) -> None:
        actual = int(usage.get("input_tokens", 0)) + int(usage.get("output_tokens", 0))
        for limit in self.settings.rate_limits_for(model):
            if limit.tpm:
                await self.store.charge_tokens(limit.key, actual - estimate)

    async def _record_failure(
        self, atom: Reason, model: ModelSpec, exc: ProviderError, price: Any, estimate: int
    ) -> None:
        retry = self.spec.retry
        opened_until = None
        if exc.error_class in BREAKER_CLASSES and not model.offline:
            opened_until = await self.store.record_outcome(
                breaker_key(model),
                ok=False,
                threshold=retry.breaker_threshold,
                cooldown=retry.breaker_cooldown,
            )
        usage: dict[str, Any] = dict(exc.usage)
        if usage:
            usage = priced(usage, model, price)
            await self._correct_rate(model, estimate, usage)
        retry_at = None
        if exc.retryable:
            has_fallback = opened_until is not None and len(candidates(self.spec)) > 1
            delay = (
                0.0
                if has_fallback
                else backoff_delay(retry, self.log.state.failures + 1, exc.retry_after)
            )
            retry_at = time.time() + delay
        data: dict[str, Any] = {
            "attempt": atom.attempt,
            "model": model.label,
            "error": exc.message,
            "class": exc.error_class,
            "retryable": exc.retryable,
            "retry_at": retry_at,
            "retry_after": exc.retry_after,
            "status": exc.status,
            "usage": usage,
        }
        if opened_until is not None:
            data["breaker_open_until"] = opened_until
        await self.log.append(EventType.LLM_FAILED, data)


def lost_attempt_charge(
    state: State, spec: AgentSpec, tools: dict[str, Tool], prices: dict[str, Pricing]
) -> dict[str, Any]:
    """`llm.charged` for the attempt a dead (or fenced) holder had in flight: its
    `llm.started` has no completion. The request it sent is rebuilt from the journal
    (nothing is folded into the conversation while a call is in flight), so its input
    is estimated like any unreported usage; its streamed output was ephemeral and is
    not known (0). Journaled by the next holder with its `run.started`."""
    model = next((m for m in candidates(spec) if m.label == state.model), spec.model)
    request = LLMRequest(
        model=model,
        system=spec.system_prompt,
        messages=model_view(state),
        tools=[t.schema for t in tools.values()],
        step=state.steps,
        attempt=state.attempt,
    )
    usage = priced(estimate_usage(request, ""), model, price_for(model, prices))
    return {"attempt": state.attempt, "model": model.label, "reason": "lost", "usage": usage}


def _render_message(message: dict[str, Any]) -> str:
    role = message["role"]
    if role == "tool":
        return f"[tool result {message.get('name')} {message.get('tool_call_id')}]\n{message.get('content')}"
    if role == "assistant" and message.get("tool_calls"):
        calls = "; ".join(f"{c['name']}({c.get('arguments')})" for c in message["tool_calls"])
        return f"[assistant] {message.get('content') or ''}\n[tool calls] {calls}"
    return f"[{role}] {message.get('content') or ''}"
