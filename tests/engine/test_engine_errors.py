"""An unexpected exception inside one run's atom: that run fails (or is retried, for a
store outage) with a journaled reason at once, and the worker's other runs go on.

Before, the exception escaped the run's task, the worker only logged it, the lease
had to expire, and each takeover hit the same exception until `crash_loop`.
The fault is injected in-process into the store the worker uses (a real database).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from everruns.core.events import LLM_FAILED, LLM_STARTED, RUN_FAILED, RUN_STARTED
from everruns.engine.worker import Worker
from everruns.settings import Settings
from everruns.spec import parse_spec
from everruns.store import Store

pytestmark = pytest.mark.timeout(60)


def _spec(name: str, text: str) -> Any:
    return parse_spec(
        {
            "name": name,
            "model": {"provider": "scripted", "responses": [{"text": text}]},
        }
    )


async def _until_final(store: Store, run_ids: list[str], timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        rows = {r: await store.get_run(r) for r in run_ids}
        if all(row.status in ("completed", "failed") for row in rows.values()):
            return rows
        assert time.monotonic() < deadline, {r: row.status for r, row in rows.items()}
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("fault", ["bug", "outage"])
async def test_unexpected_exception_stays_in_its_run(db_url: str, fault: str) -> None:
    store = await Store.open(db_url)
    try:
        bad = await store.create_run(_spec("bad", "never"), "go")
        good = await store.create_run(_spec("good", "fine"), "go")
        original = store.append
        injected: list[str] = []

        async def faulty(rid: str, epoch: int | None, new: Any, **kw: Any) -> Any:
            if rid == bad and new and new[0][0] == LLM_STARTED and not injected:
                injected.append(rid)
                if fault == "bug":
                    raise RuntimeError("a bug in an atom")
                raise ConnectionResetError("the database went away")
            return await original(rid, epoch, new, **kw)

        store.append = faulty  # type: ignore[method-assign]
        # A long lease: recovery must not wait for it to expire.
        worker = Worker(store, lease_ttl=60, poll_interval=0.05, settings=Settings())
        task = asyncio.create_task(worker.run())
        try:
            rows = await _until_final(store, [bad, good])
        finally:
            worker.stop()
            await asyncio.wait_for(task, 15)
        assert injected == [bad]
        assert rows[good].status == "completed" and rows[good].result == "fine"
        events = await store.load_events(bad)
        if fault == "bug":
            assert rows[bad].status == "failed"
            (failed,) = [e for e in events if e.type == RUN_FAILED]
            assert failed.data["reason"] == "engine_error"
            assert "RuntimeError: a bug in an atom" in failed.data["error"]
        else:  # released and retried: the same worker finishes it, no takeover
            assert rows[bad].status == "completed" and rows[bad].result == "never"
            starts = [e for e in events if e.type == RUN_STARTED]
            assert len(starts) == 2 and not starts[1].data["takeover"]
    finally:
        await store.close()


async def test_sdk_rejection_fails_fast_without_crashing(tmp_path: Path, db_url: str) -> None:
    """Bug 1: an option the SDK rejects raised TypeError out of the run: five takeovers,
    then crash_loop. Now it is one journaled `invalid_request` failure."""
    spec = parse_spec(
        {
            "name": "strict",
            "model": {
                "provider": "openai-compatible",
                "name": "m",
                "base_url": "http://127.0.0.1:9/v1",
                "parameters": {"max_tokens": 5},
            },
        }
    )
    store = await Store.open(db_url)
    try:
        from everruns.providers import openai_chat

        # What anthropic 2.x did with `temperature`: a TypeError while building the call.
        original = openai_chat.tool_options

        def exploding(*args: Any) -> dict[str, Any]:
            raise TypeError("create() got an unexpected keyword argument 'ignore_eos'")

        openai_chat.tool_options = exploding  # type: ignore[assignment]
        run_id = await store.create_run(spec, "go")
        worker = Worker(store, lease_ttl=60, poll_interval=0.05, settings=Settings())
        task = asyncio.create_task(worker.run())
        try:
            rows = await _until_final(store, [run_id])
        finally:
            worker.stop()
            await asyncio.wait_for(task, 15)
            openai_chat.tool_options = original  # type: ignore[assignment]
        row = rows[run_id]
        assert row.status == "failed" and row.error["reason"] == "invalid_request"
        assert "ignore_eos" in row.error["message"]
        events = await store.load_events(run_id)
        assert [e.type for e in events].count(RUN_STARTED) == 1
        (failure,) = [e for e in events if e.type == LLM_FAILED]
        assert failure.data["class"] == "invalid_request" and not failure.data["retryable"]
    finally:
        await store.close()
