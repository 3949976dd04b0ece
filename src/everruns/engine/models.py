"""Which model answers next: fallbacks, circuit breakers and fleet-wide rate limits."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from everruns import metrics
from everruns.settings import Settings
from everruns.spec import AgentSpec, ModelSpec
from everruns.store import Store


def breaker_key(model: ModelSpec) -> str:
    return f"breaker:{model.provider}:{model.name}@{model.base_url or ''}"


def candidates(spec: AgentSpec) -> list[ModelSpec]:
    return [spec.model, *spec.model.fallbacks]


@dataclass(frozen=True)
class Choice:
    model: ModelSpec | None  # None: every candidate's breaker is open
    wake_at: float | None = None  # when the first breaker closes again
    skipped: tuple[str, ...] = ()  # labels passed over because their breaker is open


async def choose_model(store: Store, spec: AgentSpec) -> Choice:
    """The first candidate whose breaker is closed (the primary as soon as it heals)."""
    models = candidates(spec)
    if len(models) == 1 and models[0].offline:
        return Choice(models[0])
    open_until = await store.breakers_open([breaker_key(m) for m in models])
    skipped: list[str] = []
    for model in models:
        if breaker_key(model) not in open_until:
            return Choice(model, skipped=tuple(skipped))
        skipped.append(model.label)
    return Choice(None, wake_at=min(open_until.values()), skipped=tuple(skipped))


async def acquire_rate_limits(
    store: Store, settings: Settings, model: ModelSpec, tokens: int, *, max_sleep: float
) -> float:
    """Wait (in memory, up to `max_sleep`) for every matching fleet-wide bucket.

    Returns 0.0 when granted, else the seconds until a retry may succeed (the
    caller parks the run durably).
    """
    for limit in settings.rate_limits_for(model):
        wait = await take_from_bucket(
            store, limit.key, rpm=limit.rpm, tpm=limit.tpm, tokens=tokens, max_sleep=max_sleep
        )
        if wait:
            return wait
    return 0.0


async def take_from_bucket(
    store: Store,
    key: str,
    *,
    rpm: float | None,
    tpm: float | None = None,
    tokens: float = 0,
    burst: float | None = None,
    max_sleep: float,
) -> float:
    """Take from one fleet-wide bucket, sleeping in memory up to `max_sleep`; 0.0 when
    granted, else the seconds until a retry may succeed (the caller waits durably)."""
    while True:
        wait = await store.acquire_rate(key, rpm=rpm, tpm=tpm, tokens=tokens, burst=burst)
        if wait == 0.0:
            return 0.0
        durable = wait > max_sleep
        metrics.RATE_LIMIT_WAITS.labels(key, str(durable).lower()).inc()
        metrics.RATE_LIMIT_WAIT_SECONDS.labels(key).inc(wait)
        if durable:
            return wait
        await asyncio.sleep(wait)
