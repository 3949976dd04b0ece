"""Budgets, pure parts: ledgers, effective limits, the fold and projection of
`llm.charged` / `limits.changed`, and the usage an unanswered attempt is charged."""

from __future__ import annotations

from typing import Any

import pytest

from everruns.core.budget import Ledger, breach, charge, check_change, effective_limits
from everruns.core.decide import Fail, Reason, decide
from everruns.core.events import Event, EventType
from everruns.core.projection import project
from everruns.core.state import fold
from everruns.providers.base import LLMRequest, attempt_usage
from everruns.providers.pricing import check_unpriced, priced, unpriced_models
from everruns.spec import Limits, ModelSpec, parse_spec


def _events(*items: tuple[str, dict[str, Any]]) -> list[Event]:
    return [Event(i + 1, kind, 100.0 + i, data) for i, (kind, data) in enumerate(items)]


CREATED = (EventType.RUN_CREATED, {"input": "go", "agent": {"name": "a", "version": 1}})


def test_ledger_sums_and_unknown_cost() -> None:
    a = charge({"input_tokens": 10, "output_tokens": 5, "cost_usd": 0.25})
    b = charge({"input_tokens": 1, "output_tokens": 1, "cost_usd": 0.0, "cost_known": False})
    assert (a + b).total_tokens == 17
    assert a.as_usage()["cost_usd"] == 0.25 and a.as_usage()["cost_known"] is True
    unknown = (a + b).as_usage()
    assert unknown["cost_usd"] is None and unknown["cost_known"] is False  # never $0


def test_breach_names_the_limit() -> None:
    limits = Limits(max_cost_usd=0.5, max_tokens=1000)
    assert breach(limits, Ledger(100, 100, 0.49)) is None
    assert "max_cost_usd=0.5" in (breach(limits, Ledger(100, 100, 0.5)) or "")
    assert "max_tokens=1000" in (breach(limits, Ledger(600, 400, 0.0)) or "")


def test_check_change_validates_like_the_spec() -> None:
    assert check_change({"deadline": "2h", "max_steps": 9}) == {"deadline": 7200.0, "max_steps": 9}
    with pytest.raises(ValueError, match="not a limit: max_money"):
        check_change({"max_money": 1})
    with pytest.raises(ValueError, match="max_cost_usd"):
        check_change({"max_cost_usd": -1})
    with pytest.raises(ValueError, match="at least one"):
        check_change({})


def test_charged_attempt_is_folded_and_projected_once() -> None:
    usage = {"input_tokens": 40, "output_tokens": 3, "cost_usd": 0.01, "estimated": True}
    events = _events(
        CREATED,
        (EventType.RUN_STARTED, {"epoch": 1}),
        (EventType.LLM_STARTED, {"attempt": 1, "step": 1, "model": "m"}),
        (EventType.LLM_CHARGED, {"attempt": 1, "model": "m", "reason": "lost", "usage": usage}),
        (EventType.RUN_STARTED, {"epoch": 2}),
    )
    state = fold(events)
    assert not state.llm_in_flight
    assert (state.input_tokens, state.output_tokens) == (40, 3)
    update = project([(e.type, e.data) for e in events], 0.0)
    assert update.add["input_tokens"] == 40 and update.add["cost_usd"] == pytest.approx(0.01)
    # Not progress: a worker that only charged a lost attempt counts as a crash-loop holder.
    only_charge = project([(EventType.LLM_CHARGED, {"usage": usage})], 0.0)
    assert "progress_seq" not in only_charge.seq


def test_unpriced_calls_are_counted() -> None:
    usage = {"input_tokens": 5, "output_tokens": 5, "cost_usd": 0.0, "cost_known": False}
    events = _events(CREATED, (EventType.LLM_FAILED, {"usage": usage, "retryable": True}))
    assert fold(events).unpriced_calls == 1
    assert project([(e.type, e.data) for e in events], 0.0).add["unpriced_calls"] == 1


def test_limits_changed_overrides_the_spec_and_resume_reopens() -> None:
    spec = parse_spec(
        {
            "name": "a",
            "model": {"provider": "scripted", "responses": [{"text": "x"}]},
            "limits": {"max_steps": 1},
        }
    )
    done = {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "name": "t"}]}
    events = _events(
        CREATED,
        (EventType.RUN_STARTED, {"epoch": 1}),
        (EventType.LLM_STARTED, {"attempt": 1}),
        (EventType.LLM_COMPLETED, {"attempt": 1, "message": done, "usage": {}}),
        (EventType.TOOL_STARTED, {"call_id": "c1", "name": "t"}),
        (EventType.TOOL_COMPLETED, {"call_id": "c1", "name": "t", "output": "ok"}),
    )
    state = fold(events)
    assert decide(state, spec, 200.0) == Fail("max_steps_exceeded", "max_steps=1 reached")
    more = _events(
        *[(e.type, e.data) for e in events],
        (EventType.RUN_FAILED, {"reason": "max_steps_exceeded", "error": "x"}),
        (EventType.LIMITS_CHANGED, {"by": "t", "old": {}, "new": {}, "limits": {"max_steps": 5}}),
        (EventType.RUN_RESUMED, {"by": "t"}),
    )
    state = fold(more)
    assert state.status == "queued" and state.error is None
    assert effective_limits(spec.limits, state.limits).max_steps == 5
    assert decide(state, spec, 200.0) == Reason(attempt=1)
    row = project([(e.type, e.data) for e in more[-2:]], 0.0).set
    assert row["limits"] == {"max_steps": 5} and row["error"] is None


def test_child_finishing_twice_counts_its_latest_totals() -> None:
    first = {"run_id": "c", "status": "failed", "usage": {"total_tokens": 10, "cost_usd": 0.1}}
    again = {"run_id": "c", "status": "completed", "usage": {"total_tokens": 25, "cost_usd": 0.3}}
    state = fold(
        _events(CREATED, (EventType.CHILD_FINISHED, first), (EventType.CHILD_FINISHED, again))
    )
    assert state.children_tokens == 25 and state.children_cost == pytest.approx(0.3)


def _request() -> LLMRequest:
    model = ModelSpec.model_validate("openai:gpt-4.1")
    return LLMRequest(model, "sys", [{"role": "user", "content": "x" * 400}], [], 0, 1)


def test_an_unanswered_attempt_is_charged_by_estimate() -> None:
    request = _request()
    broken = attempt_usage({}, request, "y" * 40, billed=True)
    assert broken["estimated"] is True and broken["input_tokens"] >= 100
    assert broken["output_tokens"] == 10
    # Reported input, output cut short: only the output is estimated.
    partial = attempt_usage({"input_tokens": 77, "output_tokens": 0}, request, "z" * 8, billed=True)
    assert partial == {"input_tokens": 77, "output_tokens": 2, "estimated": True}
    # Refused before any answer (a 429, a 401): nothing was billed.
    assert attempt_usage({}, request, "", billed=False) == {}


def test_unpriced_models_and_the_cost_limit() -> None:
    def spec(**limits: Any) -> Any:
        model = {"provider": "openai-compatible", "name": "llama", "base_url": "http://x/v1"}
        return parse_spec({"name": "a", "model": model, "limits": limits})

    assert [m.label for m in unpriced_models(spec(), {})] == ["openai-compatible:llama"]
    assert check_unpriced(spec(), {}) is None  # no cost limit: a warning only
    problem = check_unpriced(spec(max_cost_usd=1), {}) or ""
    assert "model.pricing" in problem and "limits.unpriced: allow" in problem
    assert check_unpriced(spec(max_cost_usd=1, unpriced="allow"), {}) is None
    model = ModelSpec.model_validate(
        {
            "provider": "openai-compatible",
            "name": "llama",
            "base_url": "http://x/v1",
            "pricing": {"input_per_mtok": 1, "output_per_mtok": 2},
        }
    )
    assert unpriced_models(parse_spec({"name": "a", "model": model.model_dump()}), {}) == []
    usage = priced({"input_tokens": 1_000_000, "output_tokens": 1_000_000}, model, model.pricing)
    assert usage["cost_usd"] == pytest.approx(3.0) and "cost_known" not in usage
    unpriced = ModelSpec.model_validate({**model.model_dump(), "pricing": None})
    assert priced({"input_tokens": 1}, unpriced, None)["cost_known"] is False
