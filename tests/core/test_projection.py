"""The runs-row projection (core/projection.py) against the rows of the code it replaced.

tests/core/fixtures/projection_golden.json was recorded by tests/core/record_golden.py
on the code from before the projection existed (the runner and the store set the
columns by hand): twelve runs (tool calls, a failure, a retry, an approval, cancel
while parked and while running, pause/resume, a message after completion, a fork, a
parent and its child, compaction), with the row before and after every append.

Replaying every append through `project` must give the recorded row, column by
column. Two places where the old code lagged behind its own fold are fixed, and
checked as such: compaction usage is counted at `context.compacted` (the old code
counted it at the next append), and a forked run's totals are set when it is
forked (the old code set them at its first `run.started`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from everruns.core.events import (
    CONTEXT_COMPACTED,
    PAYLOADS,
    RUN_FORKED,
    TERMINAL_STATUSES,
    Event,
    EventType,
    RunStatus,
)
from everruns.core.projection import TOTALS, RowFacts, project, totals
from everruns.core.state import fold

GOLDEN = json.loads((Path(__file__).parent / "fixtures" / "projection_golden.json").read_text())
RUNS = [
    (name, run_id, run)
    for name, scenario in sorted(GOLDEN["scenarios"].items())
    for run_id, run in scenario["runs"].items()
]
EXACT = (
    "status",
    "lease_owner",
    "lease_expires_at",
    "last_seq",
    "progress_seq",
    "claim_seq",
    "cancel_requested",
    "pause_requested",
    "result",
    "error",
)


def _facts(row: dict[str, Any]) -> RowFacts:
    return RowFacts(row["status"], row["lease_owner"] is not None, row["wake_at"])


def _replay(append: dict[str, Any]) -> dict[str, Any]:
    before = append["before"]
    events = [(e["type"], e["data"]) for e in append["events"]]
    now = append["events"][-1]["ts"]
    current = None if append["fenced"] else _facts(before)
    return project(events, now, current).apply(before)


def _forked_prefix(run: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The events a fork copied (before its run.forked): not appended, but inserted."""
    seqs = {e["seq"] for a in run["appends"] for e in a["events"]}
    return [(e["type"], e["data"]) for e in run["events"] if e["seq"] not in seqs]


def test_fixture_covers_the_scenarios() -> None:
    names = set(GOLDEN["scenarios"])
    assert {"tool_calling", "failed", "cancelled_parked", "cancelled_running", "approval"} <= names
    assert {"paused_resumed", "message_after_completion", "fork", "child", "compaction"} <= names
    seen = {e["type"] for _, _, run in RUNS for e in run["events"]}
    assert {str(t) for t in EventType} - seen <= {
        "llm.fallback",
        "tools.listed",
        # Newer than the recording (issue 19): tests/engine/test_steer_interrupt.py and test_outcomes.py.
        "run.interrupted",
        "outcome.grading",
        "outcome.graded",
        "tool.retrying",  # projects nothing onto the row (tests/tools/test_tool_retries.py)
        # Newer than the recording; their projection is tested in tests/core/test_budget.py.
        "llm.charged",
        "limits.changed",
    }, "a scenario lost an event type"


@pytest.mark.parametrize(("name", "run_id", "run"), RUNS, ids=[f"{n}-{r[-6:]}" for n, r, _ in RUNS])
def test_projection_reproduces_the_recorded_row(
    name: str, run_id: str, run: dict[str, Any]
) -> None:
    assert run["appends"], "every run has appends"
    # The totals are cumulative: replay them from the row's creation.
    running = totals(_forked_prefix(run)) if name == "fork" else dict.fromkeys(TOTALS, 0)
    for append in run["appends"]:
        got = _replay(append)
        want = append["after"]
        where = f"{name} seq {append['events'][0]['seq']} {append['events'][0]['type']}"
        for column in EXACT:
            assert got[column] == want[column], f"{where}: {column}"
        if want["wake_at"] is None:
            assert got["wake_at"] is None, f"{where}: wake_at"
        else:  # a signal's `now` is read a moment before the append's
            assert got["wake_at"] == pytest.approx(want["wake_at"], abs=1.0), f"{where}: wake_at"
        increment = project([(e["type"], e["data"]) for e in append["events"]], 0.0).add
        for column in TOTALS:
            running[column] += increment.get(column, 0)
        kinds = [e["type"] for e in append["events"]]
        if CONTEXT_COMPACTED in kinds or (name == "fork" and RUN_FORKED in kinds):
            # The fixed places: the old row caught up at the next (fenced) append.
            assert any(running[c] != pytest.approx(want.get(c, 0)) for c in TOTALS), where
            continue
        for column in TOTALS:
            # The recorded rows predate unpriced_calls and cached_input_tokens (0 here).
            got_total = pytest.approx(want.get(column, 0))
            assert running[column] == got_total, f"{where}: {column}"


@pytest.mark.parametrize(("name", "run_id", "run"), RUNS, ids=[f"{n}-{r[-6:]}" for n, r, _ in RUNS])
def test_projection_agrees_with_the_fold(name: str, run_id: str, run: dict[str, Any]) -> None:
    """For every prefix of the journal: the projected totals and outcome equal the fold's."""
    events = [Event(e["seq"], e["type"], e["ts"], e["data"]) for e in run["events"]]
    row: dict[str, Any] = {
        "status": RunStatus.QUEUED,
        "last_seq": 0,
        "result": None,
        "error": None,
        **dict.fromkeys(TOTALS, 0),
    }
    for n, event in enumerate(events, 1):
        row = project([(event.type, event.data)], event.ts, _unleased(row)).apply(row)
        state = fold(events[:n])
        where = f"{name} after seq {event.seq} {event.type}"
        assert row["last_seq"] == state.last_seq == event.seq, where
        assert row["steps"] == state.steps, where
        assert row["input_tokens"] == state.input_tokens, where
        assert row["output_tokens"] == state.output_tokens, where
        assert row["cost_usd"] == pytest.approx(state.cost_usd), where
        assert row["unpriced_calls"] == state.unpriced_calls, where
        if state.status in TERMINAL_STATUSES or state.status == RunStatus.PAUSED:
            assert row["status"] == state.status, where
        if state.status == RunStatus.COMPLETED:
            assert row["result"] == state.result, where
        if state.status in (RunStatus.FAILED, RunStatus.CANCELLED):
            assert row["error"]["message"] in (state.error or {}).values(), where


def _unleased(row: dict[str, Any]) -> RowFacts:
    return RowFacts(str(row["status"]), False, None)


def test_signal_wakes_only_a_parked_run() -> None:
    parked = RowFacts(RunStatus.WAITING, leased=False, wake_at=None)
    held = RowFacts(RunStatus.RUNNING, leased=True, wake_at=None)
    due_later = RowFacts(RunStatus.WAITING, leased=False, wake_at=500.0)
    due_soon = RowFacts(RunStatus.QUEUED, leased=False, wake_at=50.0)
    signal = [(EventType.APPROVAL_GRANTED, {"call_id": "c"})]
    assert project(signal, 100.0, parked).set["wake_at"] == 100.0
    assert project(signal, 100.0, due_later).set["wake_at"] == 100.0
    assert "wake_at" not in project(signal, 100.0, held).set
    assert "wake_at" not in project(signal, 100.0, due_soon).set


def test_message_to_a_finished_run_starts_a_new_turn() -> None:
    done = RowFacts(RunStatus.COMPLETED, leased=False, wake_at=None)
    update = project([(EventType.MESSAGE_USER, {"content": "again"})], 7.0, done)
    assert update.set == {
        "updated_at": 7.0,
        "status": RunStatus.QUEUED,
        "wake_at": 7.0,
        "result": None,
        "error": None,
    }


def test_seq_marks_are_offsets_from_last_seq() -> None:
    events = [
        (EventType.RUN_STARTED, {"epoch": 2}),
        (EventType.LLM_STARTED, {"attempt": 1}),
    ]
    update = project(events, 0.0)
    assert update.seq == {"claim_seq": 1, "last_seq": 2}  # nothing but starts: no progress
    row = update.apply({"last_seq": 10, "claim_seq": 0, "progress_seq": 3})
    assert (row["last_seq"], row["claim_seq"], row["progress_seq"]) == (12, 11, 3)
    usage = {"input_tokens": 5, "output_tokens": 2, "cost_usd": 0.5}
    update = project([(EventType.LLM_COMPLETED, {"message": {}, "usage": usage})], 0.0)
    assert update.seq == {"progress_seq": 1, "last_seq": 1}
    assert update.add == {"steps": 1, "input_tokens": 5, "output_tokens": 2, "cost_usd": 0.5}


def test_cached_input_tokens_are_a_total_of_the_row() -> None:
    """The cache hit ratio of `status` comes from the row: cache reads add up like tokens."""
    usage = {"input_tokens": 100, "output_tokens": 2, "cached_input_tokens": 80}
    events = [(EventType.LLM_COMPLETED, {"message": {}, "usage": usage})] * 2
    assert project(events, 0.0).add["cached_input_tokens"] == 160
    assert totals(events)["cached_input_tokens"] == 160


def test_every_event_type_has_a_payload_type() -> None:
    assert set(PAYLOADS) == set(EventType)
    assert {str(s) for s in RunStatus} == {
        "queued",
        "running",
        "waiting",
        "paused",
        "completed",
        "failed",
        "cancelled",
    }
