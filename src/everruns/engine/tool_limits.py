"""Durable retries and fleet-wide rate limits of tool calls.

A call whose tool raises `RetryLater` (a 429 or 503 of the http built-in, or a
Python tool saying "not done") or fails transiently (a 5xx, a dropped connection;
only for tools that are not `at_most_once`) is retried per the entry's `retry:`
block with the provider back-off (`core/backoff.py`). A `rate_limit:` takes from the
token buckets the provider rate limits use (`store/fleet.py`), with a burst of one so
the calls are spaced evenly, and holds one of `concurrency` slots while the call runs.
The engine journals `tool.retrying` and parks the run like any other wait: waits
longer than `retry.durable_wait_after` release the worker.
"""

from __future__ import annotations

import asyncio
import time

from everruns.core.backoff import backoff_delay
from everruns.engine.models import take_from_bucket
from everruns.errors import RetryLater, TransientToolError
from everruns.spec import ToolRetry
from everruns.store import Store
from everruns.tools.base import Tool

SLOT_POLL = 0.2  # seconds between looks for a free concurrency slot
DEFAULT_SLOT_TTL = 600.0  # a slot's expiry when the tool has no timeout


def retry_delay(tool: Tool, attempt: int, exc: BaseException) -> float | None:
    """Seconds until attempt `attempt + 1`, or None when the call fails for good."""
    policy = tool.retry or ToolRetry()
    if attempt >= policy.max_attempts:
        return None
    if isinstance(exc, RetryLater):
        return backoff_delay(policy, attempt, exc.after)
    if isinstance(exc, TransientToolError) and tool.retry is not None:
        if tool.effect == "at_most_once":
            return None  # the attempt may have acted: only the tool can say it did not
        return backoff_delay(policy, attempt)
    return None


def give_up_message(tool: Tool, attempt: int, error: str) -> str:
    policy = tool.retry or ToolRetry()
    if attempt >= policy.max_attempts > 1:
        return (
            f"{error} (gave up after {attempt} attempts; retry.max_attempts={policy.max_attempts})"
        )
    return error


class RateLimiter:
    """Holds a tool's fleet-wide budget around one call."""

    def __init__(self, store: Store, max_sleep: float):
        self.store = store
        self.max_sleep = max_sleep

    async def acquire(self, tool: Tool, holder: str) -> float:
        """0.0 when the call may run now (a slot held for `holder`), else the seconds
        until it should ask again (nothing held)."""
        limit = tool.rate_limit
        if limit is None:
            return 0.0
        if limit.concurrency:
            waited = 0.0
            ttl = tool.timeout + 30 if tool.timeout else DEFAULT_SLOT_TTL
            while not await self.store.acquire_slot(
                _slots(limit.key), holder, limit=limit.concurrency, ttl=ttl
            ):
                if waited >= self.max_sleep:
                    return max(SLOT_POLL, 1.0)
                await asyncio.sleep(SLOT_POLL)
                waited += SLOT_POLL
        if limit.rpm:
            wait = await take_from_bucket(
                self.store, _bucket(limit.key), rpm=limit.rpm, burst=1, max_sleep=self.max_sleep
            )
            if wait:
                await self.release(tool, holder)
                return wait
        return 0.0

    async def release(self, tool: Tool, holder: str) -> None:
        limit = tool.rate_limit
        if limit is not None and limit.concurrency:
            await self.store.release_slot(_slots(limit.key), holder)


def _bucket(key: str) -> str:
    return f"tool:{key}"


def _slots(key: str) -> str:
    return f"tool:{key}#slots"


def retry_at(delay: float) -> float:
    return time.time() + delay
