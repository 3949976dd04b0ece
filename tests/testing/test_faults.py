"""Injected provider faults: every kind, at given steps and at a rate; the run still
completes, and the report shows the retries and the waits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from everruns.core.events import LLM_FAILED, LLM_STARTED, RUN_COMPLETED
from everruns.core.state import fold, transcript
from everruns.testing import assert_exactly_once, crash_matrix, faults, run_agent
from everruns.testing.faults import choose

EXAMPLES = Path(__file__).parent / "examples"
pytestmark = pytest.mark.timeout(180)
FAST_RETRY = {"initial_backoff": 0.05, "max_backoff": 0.1, "durable_wait_after": 30}


@pytest.fixture(autouse=True)
def examples_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLES))


def pricing() -> dict[str, Any]:
    return {
        "name": "prices",
        "model": {"provider": "python", "function": "pricing:respond"},
        "tools": ["pricing:price"],
        "retry": FAST_RETRY,
    }


def test_every_fault_kind_at_given_steps(tmp_path: Path) -> None:
    spec = faults(
        pricing(),
        at={
            1: ["rate_limited", "overloaded", "server_error"],
            2: ["timeout", "truncated", "stalled"],
        },
        retry_after=0.3,
        stall=0.1,
    )
    report = run_agent(spec, "price of apple", tmp=tmp_path)
    assert report.status == "completed" and report.result == "it costs 3 EUR", report.format()
    retries = [(r.step, r.attempt, r.error_class, r.status) for r in report.retries]
    assert retries == [
        (1, 1, "rate_limited", 429),
        (1, 2, "overloaded", 529),
        (1, 3, "server_error", 503),
        (2, 1, "timeout", None),
        (2, 2, "stream_broken", None),
        (2, 3, "stream_broken", None),
    ]
    failed = [e for e in report.events if e.type == LLM_FAILED]
    assert "ended before the answer was complete" in failed[4].data["error"]
    assert "stalled" in failed[5].data["error"]
    # The 429's Retry-After is honoured: the retry was scheduled 0.3 s out (measured from
    # just before the failure was journaled) and the next attempt did not start sooner.
    assert failed[0].data["retry_after"] == 0.3
    assert failed[0].data["retry_at"] - failed[0].ts > 0.25
    second = next(e for e in report.events if e.type == LLM_STARTED and e.seq > failed[0].seq)
    assert second.ts >= failed[0].data["retry_at"]
    text = report.format()
    assert "6 retries" in text
    assert "step 1 attempt 1: rate_limited 429, Retry-After 0.3s; retried after" in text
    # The answers are the wrapped model's: the plan is not shown to it.
    assert report.events[-1].type == RUN_COMPLETED


def test_faults_at_a_rate_are_deterministic(tmp_path: Path) -> None:
    plain = {
        "name": "counter",
        "model": {"provider": "python", "function": "counting:respond"},
        "tools": ["counting:count"],
        "retry": FAST_RETRY,
    }
    spec = faults(
        plain,
        rate=0.4,
        seed=11,
        kinds=["server_error", "overloaded", "rate_limited"],
        retry_after=0.05,
    )
    plan = spec.model.parameters["everruns_faults"]
    expected = []
    for step in range(1, 11):
        attempt = 1
        while (kind := choose(plan, step, attempt)) is not None:
            expected.append((step, attempt, kind))
            attempt += 1
    assert expected, "the seed injects no fault; pick another"
    report = run_agent(spec, "count", tmp=tmp_path / "faulty")
    assert report.status == "completed"
    assert [(r.step, r.attempt, r.error_class) for r in report.retries] == expected
    clean = run_agent(plain, "count", tmp=tmp_path / "clean")
    assert transcript(fold(report.events)) == transcript(fold(clean.events))


def test_unknown_fault_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown fault 'gremlins'"):
        faults(pricing(), at={1: "gremlins"})


def test_faults_survive_the_crash_matrix(tmp_path: Path) -> None:
    """The plan travels with the spec into the matrix's worker subprocesses: a crash
    around the failed attempt repeats the same fault, and the run still completes."""
    spec = faults(pricing(), at={1: "rate_limited"}, retry_after=0.1)
    report = crash_matrix(spec, "price of pear", only=["llm.failed"], tmp=tmp_path)
    assert [c.point for c in report.cases] == ["before:llm.failed#1", "after:llm.failed#1"]
    assert all(c.reached and c.status == "completed" for c in report.cases)
    assert_exactly_once(report)
