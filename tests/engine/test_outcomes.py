"""Outcomes: a scripted grader fails the first answer, passes the second."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from everruns.core.events import EventType
from everruns.core.outcome import parse_grade, verdict
from everruns.core.state import fold
from everruns.engine.worker import Worker
from everruns.settings import Settings
from everruns.spec import parse_spec
from everruns.store import Store
from helpers import wait_until

pytestmark = pytest.mark.timeout(60)


def _spec(grades: list[str], max_iterations: int = 3) -> dict[str, object]:
    return {
        "name": "graded",
        "model": {
            "provider": "scripted",
            "responses": [
                {"text": "draft", "usage": {"input_tokens": 10, "output_tokens": 5}},
                {"text": "final", "usage": {"input_tokens": 20, "output_tokens": 5}},
            ],
            "pricing": {"input": 1.0, "output": 1.0},
        },
        "outcome": {
            "rubric": "Say final.",
            "max_iterations": max_iterations,
            "grader": {
                "model": {
                    "provider": "scripted",
                    "responses": [
                        {"text": g, "usage": {"input_tokens": 100, "output_tokens": 10}}
                        for g in grades
                    ],
                    "pricing": {"input": 1.0, "output": 1.0},
                }
            },
        },
    }


async def _run(db_url: str, spec: dict[str, object]) -> tuple[str, Store]:
    store = await Store.open(db_url)
    run_id = await store.create_run(parse_spec(spec), "write it")
    worker = Worker(store, lease_ttl=10, poll_interval=0.05, settings=Settings())
    task = asyncio.create_task(worker.run())
    try:

        async def ended() -> bool:
            return (await store.get_run(run_id)).status in ("completed", "failed")

        await wait_until(ended, 30, 0.05, "the run's end")
    finally:
        worker.stop()
        await asyncio.wait_for(task, 15)
    return run_id, store


async def test_grader_fails_once_then_passes(db_url: str, tmp_path: Path) -> None:
    fail = '{"pass": false, "feedback": "it is only a draft"}'
    run_id, store = await _run(db_url, _spec([fail, '{"pass": true, "feedback": ""}']))
    try:
        row = await store.get_run(run_id)
        events = await store.load_events(run_id)
    finally:
        await store.close()
    assert (row.status, row.result, row.verdict) == ("completed", "final", "satisfied")
    grades = [e for e in events if e.type == EventType.OUTCOME_GRADED]
    assert [(g.data["iteration"], g.data["verdict"]) for g in grades] == [
        (1, "revising"),
        (2, "satisfied"),
    ]
    assert [e.type for e in events].count(EventType.OUTCOME_GRADING) == 2
    # The feedback went back to the agent as a user message, before its second answer.
    texts = [(m["role"], m["content"]) for m in fold(events).messages]
    assert texts[0] == ("user", "write it") and texts[1] == ("assistant", "draft")
    assert texts[2][0] == "user" and "it is only a draft" in texts[2][1]
    assert texts[3] == ("assistant", "final")
    # Both grader calls are charged to the run: 2 x 110 tokens on top of the agent's 40.
    assert (row.input_tokens, row.output_tokens) == (10 + 20 + 200, 5 + 5 + 20)
    assert row.cost_usd == pytest.approx((230 + 30) / 1e6)
    assert fold(events).cost_usd == pytest.approx(row.cost_usd)


async def test_iterations_run_out_not_satisfied(db_url: str, tmp_path: Path) -> None:
    run_id, store = await _run(db_url, _spec(["FAIL: no", "FAIL: still no"], max_iterations=2))
    try:
        row = await store.get_run(run_id)
    finally:
        await store.close()
    assert (row.status, row.result, row.verdict) == ("completed", "final", "not_satisfied")


def test_grade_parsing_and_verdicts() -> None:
    assert parse_grade('{"pass": true}') == (True, "")
    assert parse_grade('Sure: {"pass": false, "feedback": "cite"}') == (False, "cite")
    assert parse_grade("PASS") == (True, "")
    assert parse_grade("fail - too short") == (False, "too short")
    passed, feedback = parse_grade("looks fine to me")
    assert not passed and "not a verdict" in feedback
    assert verdict(True, 1, 3) == "satisfied"
    assert verdict(False, 1, 3) == "revising"
    assert verdict(False, 3, 3) == "not_satisfied"
