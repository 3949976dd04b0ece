"""provider: python end to end, and the scripted provider after its script ends."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from everruns.core.events import (
    LLM_COMPLETED,
    LLM_FAILED,
    LLM_STARTED,
    MESSAGE_USER,
    TERMINAL_STATUSES,
)
from everruns.core.state import State, fold
from everruns.engine.worker import Worker
from everruns.spec import SpecError, parse_spec
from everruns.store import Store

EXAMPLES = Path(__file__).parent / "examples"
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def examples_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLES))


def spec(function: str, **fields: object) -> dict[str, object]:
    return {
        "name": "py-agent",
        "model": {"provider": "python", "function": function},
        **fields,
    }


async def run_to_end(store: Store, run_id: str) -> State:
    worker = Worker(store, lease_ttl=2, poll_interval=0.05, only=[run_id])
    task = asyncio.create_task(worker.run())
    try:
        for _ in range(400):
            if (await store.get_run(run_id)).status in TERMINAL_STATUSES:
                break
            await asyncio.sleep(0.05)
    finally:
        worker.stop()
        await task
    return fold(await store.load_events(run_id))


def test_cli_run_answer_depends_on_the_tool_result(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(spec("pricing:respond", tools=["pricing:price"])))
    env = {
        **os.environ,
        "EVERRUNS_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}",
        "PYTHONPATH": str(EXAMPLES),
    }
    results = {}
    for item in ("apple", "pear"):
        done = subprocess.run(
            [sys.executable, "-m", "everruns.cli", "run", str(path), "-i", f"price of {item}"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        listing = subprocess.run(
            [sys.executable, "-m", "everruns.cli", "ls", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        runs = json.loads(listing.stdout)
        results[item] = runs[0]["result"] if isinstance(runs, list) else runs
    assert results == {"apple": "it costs 3 EUR", "pear": "it costs 5 EUR"}


async def test_tool_calls_and_classified_errors(sqlite_url: str) -> None:
    store = await Store.open(sqlite_url)
    try:
        run_id = await store.create_run(
            parse_spec(spec("pricing:respond", tools=["pricing:price"])), "price of pear"
        )
        state = await run_to_end(store, run_id)
        assert state.status == "completed" and state.result == "it costs 5 EUR"
        call = state.messages[1]["tool_calls"][0]
        assert call == {"id": "call_1_1", "name": "price", "arguments": {"item": "pear"}}
        assert state.messages[2]["content"] == "5"

        flaky = parse_spec(spec("pricing:flaky", retry={"initial_backoff": 0.05}))
        run_id = await store.create_run(flaky, "hi")
        state = await run_to_end(store, run_id)
        assert state.status == "completed" and state.result == "answered step 1"
        failed = [e for e in await store.load_events(run_id) if e.type == LLM_FAILED]
        assert [(e.data["class"], e.data["retry_after"]) for e in failed] == [("rate_limited", 0.2)]
        assert state.input_tokens == 7 and state.output_tokens == 3
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("function", "reason", "message"),
    [
        ("pricing:broken", "llm_error", "python model pricing:broken raised TypeError"),
        ("pricing:refuses", "llm_error", "bad credentials"),
        ("pricing:nope", "invalid_spec", "model.function 'pricing:nope'"),
        ("nosuchmodule:respond", "invalid_spec", "cannot import module 'nosuchmodule'"),
        ("pricing:ProviderError", "invalid_spec", "is not a Python function defined in 'pricing'"),
    ],
)
async def test_failures_are_clear(
    sqlite_url: str, function: str, reason: str, message: str
) -> None:
    store = await Store.open(sqlite_url)
    try:
        run_id = await store.create_run(parse_spec(spec(function)), "hi")
        state = await run_to_end(store, run_id)
        assert state.status == "failed"
        assert state.error is not None and state.error["reason"] == reason, state.error
        assert message in state.error["error"], state.error
        # Not retried: one attempt (an invalid spec never calls the model).
        attempts = [e for e in await store.load_events(run_id) if e.type == LLM_STARTED]
        assert len(attempts) == (0 if reason == "invalid_spec" else 1)
    finally:
        await store.close()


def test_spec_needs_a_function() -> None:
    with pytest.raises(SpecError, match="provider 'python' needs `function"):
        parse_spec({"name": "a", "model": {"provider": "python"}})
    assert parse_spec(spec("a.b:c")).model.label == "python:a.b:c"


async def test_message_after_the_script_ends_keeps_the_result(db_url: str) -> None:
    store = await Store.open(db_url)
    try:
        scripted = parse_spec(
            {"name": "s", "model": {"provider": "scripted", "responses": [{"text": "first"}]}}
        )
        run_id = await store.create_run(scripted, "hi")
        assert (await run_to_end(store, run_id)).result == "first"
        await store.signal(run_id, MESSAGE_USER, {"content": "and now?"})
        state = await run_to_end(store, run_id)
        assert state.status == "completed", state.error
        assert state.result == "first"
        assert (await store.get_run(run_id)).result == "first"
        notice = state.messages[-1]["content"]
        assert notice.startswith("script_exhausted: the scripted model has no response for step 2")
        last = [e for e in await store.load_events(run_id) if e.type == LLM_COMPLETED][-1]
        assert last.data["stop_reason"] == "script_exhausted"
    finally:
        await store.close()


async def test_script_too_short_for_a_tool_loop_still_fails(sqlite_url: str) -> None:
    store = await Store.open(sqlite_url)
    try:
        scripted = parse_spec(
            {
                "name": "s",
                "model": {
                    "provider": "scripted",
                    "responses": [{"tool_calls": [{"name": "nothing", "arguments": {}}]}],
                },
            }
        )
        run_id = await store.create_run(scripted, "hi")
        state = await run_to_end(store, run_id)
        assert state.status == "failed"
        assert "no response for step 2" in state.error["error"]
    finally:
        await store.close()
