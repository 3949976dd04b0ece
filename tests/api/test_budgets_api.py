"""Budgets over HTTP and the SDK: POST /v1/runs/{id}/limits (`runs.set_limits`), resume
after a limit failure, and the run object's `usage` / `tree_usage` / `limits` (issue 11)."""

from __future__ import annotations

import asyncio

import pytest
from fastapi.testclient import TestClient

from everruns.api.app import ApiConfig, create_app
from everruns.client import ApiError
from everruns.client.core import RetryPolicy
from everruns.client.sync import Runs
from everruns.core.events import TERMINAL_STATUSES
from everruns.engine.worker import Worker
from everruns.settings import Settings
from everruns.spec import parse_spec
from everruns.store import Store
from helpers import wait_until

PRICE = {"input_per_mtok": 1000, "output_per_mtok": 1000}
USAGE = {"input_tokens": 50, "output_tokens": 50}


async def _until_end(db_url: str, run_id: str, create: bool = False) -> str:
    async with await Store.open(db_url) as store:
        if create:
            responses = [
                {"tool_calls": [{"name": "note", "arguments": {"text": "a"}}], "usage": USAGE},
                {"text": "done", "usage": USAGE},
            ]
            spec = parse_spec(
                {
                    "name": "api-budget",
                    "model": {"provider": "scripted", "pricing": PRICE, "responses": responses},
                    "tools": [{"builtin": "notes"}],
                    "limits": {"max_steps": 1},
                }
            )
            run_id = await store.create_run(spec, "go", run_id=run_id)
        worker = Worker(store, lease_ttl=5, poll_interval=0.05, only=[run_id], settings=Settings())
        task = asyncio.create_task(worker.run())
        try:

            async def ended() -> bool:
                return (await store.get_run(run_id)).status in TERMINAL_STATUSES

            await wait_until(ended, timeout=30, interval=0.05, what="the run to end")
        finally:
            worker.stop()
            await task
        return (await store.get_run(run_id)).status


def test_limits_route_and_sdk_resume(db_url: str) -> None:
    run_id = "run_0000000000000000000000budg"
    assert asyncio.run(_until_end(db_url, run_id, create=True)) == "failed"
    app = create_app(ApiConfig(database_url=db_url, embedded_worker=False))
    with TestClient(app, base_url="http://127.0.0.1") as http:
        runs = Runs(http, RetryPolicy())
        failed = runs.get(run_id)
        assert failed.error and failed.error["reason"] == "max_steps_exceeded"
        assert failed.usage.cost_known and failed.usage.cost_usd == pytest.approx(0.1)
        assert failed.tree_usage == failed.usage
        with pytest.raises(ApiError) as refused:
            runs.resume(run_id)
        assert refused.value.status == 409 and "everruns budget" in refused.value.detail
        with pytest.raises(ApiError) as bad:
            runs.set_limits(run_id, deadline="soon")
        assert bad.value.status == 422
        event = runs.set_limits(run_id, max_steps=4, deadline="1h")
        assert event.type == "limits.changed" and event.data["by"] == "api"
        assert event.data["old"] == {"max_steps": 1, "deadline": None}
        assert event.data["new"]["max_steps"] == 4 and event.data["new"]["deadline"] >= 3600
        assert runs.resume(run_id) == "queued"
        assert runs.get(run_id).limits == event.data["limits"]
        raw = http.get(f"/v1/runs/{run_id}").json()
        assert set(raw["tree_usage"]) == {
            "input_tokens",
            "output_tokens",
            "total_tokens",
            "cost_usd",
            "cost_known",
        }
    assert asyncio.run(_until_end(db_url, run_id)) == "completed"
