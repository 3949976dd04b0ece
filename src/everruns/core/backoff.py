"""Retry back-off: exponential with full jitter, never earlier than the server asked."""

from __future__ import annotations

import random
from typing import Protocol


class Backoff(Protocol):
    """The fields of a retry policy that shape its back-off (LLM calls and tools alike)."""

    initial_backoff: float
    max_backoff: float
    multiplier: float


def backoff_delay(
    policy: Backoff,
    failures: int,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before the next attempt after `failures` consecutive failures."""
    rng = rng or random.Random()
    ceiling = min(
        policy.max_backoff, policy.initial_backoff * policy.multiplier ** max(0, failures - 1)
    )
    delay = ceiling / 2 + rng.uniform(0, ceiling / 2)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay
