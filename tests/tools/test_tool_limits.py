"""The pure parts of tool retries and the store's concurrency slots (both databases)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from everruns import RetryLater
from everruns.engine.tool_limits import give_up_message, retry_delay
from everruns.errors import ToolError, TransientToolError
from everruns.spec import ToolRetry
from everruns.store import Store
from everruns.tools.base import Tool
from everruns.tools.workspace import check_input_path, collect_inputs


async def _noop(_args: dict[str, object], _ctx: object) -> None:
    return None


def tool(effect: str, retry: ToolRetry | None) -> Tool:
    return Tool("t", "", {}, effect, _noop, retry=retry)


def test_retry_later_retries_every_effect_and_honours_after() -> None:
    policy = ToolRetry(max_attempts=3, initial_backoff=0.1, max_backoff=1)
    for effect in ("pure", "idempotent", "at_most_once"):
        delay = retry_delay(tool(effect, policy), 1, RetryLater(after=2.5))
        assert delay is not None and delay >= 2.5
        backoff = retry_delay(tool(effect, policy), 2, RetryLater())
        assert backoff is not None and 0.1 <= backoff <= 0.2  # 0.1 * 2, half to full
    assert retry_delay(tool("pure", policy), 3, RetryLater(after=1)) is None  # used up
    assert "gave up after 3 attempts" in give_up_message(tool("pure", policy), 3, "HTTP 429")
    # Without a retry block, RetryLater still gets the default 5 attempts.
    assert retry_delay(tool("at_most_once", None), 4, RetryLater()) is not None
    assert retry_delay(tool("at_most_once", None), 5, RetryLater()) is None


def test_transient_failures_retry_only_tools_that_may_repeat() -> None:
    policy = ToolRetry(max_attempts=4, initial_backoff=0.1)
    failure = TransientToolError("HTTP 502")
    assert retry_delay(tool("idempotent", policy), 1, failure) is not None
    assert retry_delay(tool("at_most_once", policy), 1, failure) is None  # may have acted
    assert retry_delay(tool("idempotent", None), 1, failure) is None  # no retry block
    assert retry_delay(tool("idempotent", policy), 1, ToolError("bad input")) is None


def test_inputs_name_their_problems(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.txt").write_text("1")
    (tmp_path / "x.txt").write_text("2")
    with pytest.raises(ValueError, match=r"two input files would be 'x\.txt'"):
        collect_inputs([tmp_path / "x.txt"], [tmp_path / "a"])
    with pytest.raises(ValueError, match="not a file"):
        collect_inputs([tmp_path / "missing.txt"], [])
    with pytest.raises(ValueError, match="not a directory"):
        collect_inputs([], [tmp_path / "x.txt"])
    for bad in ("../x", "/etc/passwd", "a//b", ""):
        with pytest.raises(ValueError, match="not a relative workspace path"):
            check_input_path(bad)
    assert check_input_path("a/b.txt") == "a/b.txt"


async def test_concurrency_slots_are_shared_released_and_expire(store: Store) -> None:
    assert await store.acquire_slot("k", "run1:c1", limit=2, ttl=60)
    assert await store.acquire_slot("k", "run1:c1", limit=2, ttl=60)  # held already
    assert await store.acquire_slot("k", "run2:c1", limit=2, ttl=60)
    assert not await store.acquire_slot("k", "run3:c1", limit=2, ttl=60)
    assert await store.acquire_slot("other", "run3:c1", limit=1, ttl=60)  # keys are apart
    await store.release_slot("k", "run1:c1")
    assert await store.acquire_slot("k", "run3:c1", limit=2, ttl=60)
    assert not await store.acquire_slot("k", "run4:c1", limit=2, ttl=60)
    # A slot whose holder died (never released) comes back when it expires.
    assert await store.acquire_slot("dead", "run5:c1", limit=1, ttl=0.05)
    await asyncio.sleep(0.1)
    assert await store.acquire_slot("dead", "run6:c1", limit=1, ttl=60)


async def test_a_burst_of_one_spaces_requests_evenly(store: Store) -> None:
    assert await store.acquire_rate("tool:k", rpm=6, tpm=None, tokens=0, burst=1) == 0.0
    wait = await store.acquire_rate("tool:k", rpm=6, tpm=None, tokens=0, burst=1)
    assert 0.0 < wait <= 10.0  # one request per 10 s, never two at once
