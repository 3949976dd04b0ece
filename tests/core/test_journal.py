"""The pure core: fold and decide, without I/O."""

from __future__ import annotations

from typing import Any

from everruns.core.decide import Act, Complete, Fail, Reason, Wait, decide
from everruns.core.events import Event, EventType
from everruns.core.state import State, fold, transcript
from everruns.spec import parse_spec

SPEC = parse_spec(
    {
        "name": "a",
        "model": {"provider": "scripted", "responses": [{"text": "x"}]},
        "limits": {"max_steps": 10},
        "retry": {"max_attempts": 3},
    }
)


class Journal:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def add(self, kind: str, ts: float = 0.0, **data: Any) -> Journal:
        self.events.append(Event(len(self.events) + 1, kind, ts, data))
        return self

    @property
    def state(self) -> State:
        return fold(self.events)


def assistant(text: str | None = None, calls: list[tuple[str, str]] | None = None) -> dict:
    msg: dict[str, Any] = {"role": "assistant", "content": text}
    if calls:
        msg["tool_calls"] = [{"id": cid, "name": name, "arguments": {}} for cid, name in calls]
    return msg


def test_new_run_reasons_first() -> None:
    state = Journal().add(EventType.RUN_CREATED, input="hi").state
    assert state.messages == [{"role": "user", "content": "hi"}]
    assert decide(state, SPEC, 1.0) == Reason(attempt=1)


def test_llm_call_in_flight_at_crash_is_repeated_with_next_attempt() -> None:
    jr = Journal().add(EventType.RUN_CREATED, input="hi").add(EventType.RUN_STARTED, epoch=1)
    jr.add(EventType.LLM_STARTED, attempt=1).add(EventType.RUN_STARTED, epoch=2)
    assert decide(jr.state, SPEC, 1.0) == Reason(attempt=2)


def test_text_answer_completes() -> None:
    jr = Journal().add(EventType.RUN_CREATED, input="hi").add(EventType.LLM_STARTED, attempt=1)
    jr.add(
        EventType.LLM_COMPLETED,
        message=assistant("done"),
        usage={"input_tokens": 3, "output_tokens": 2},
    )
    state = jr.state
    assert decide(state, SPEC, 1.0) == Complete("done")
    assert state.usage["total_tokens"] == 5
    assert state.steps == 1


def test_unfinished_tool_calls_planned_by_effect() -> None:
    jr = Journal().add(EventType.RUN_CREATED, input="hi").add(EventType.LLM_STARTED, attempt=1)
    jr.add(
        EventType.LLM_COMPLETED,
        message=assistant(calls=[("c1", "amo"), ("c2", "idem"), ("c3", "amo"), ("c4", "x")]),
    )
    jr.add(EventType.TOOL_STARTED, call_id="c1", attempt=1, effect="at_most_once")
    jr.add(EventType.TOOL_STARTED, call_id="c2", attempt=1, effect="idempotent")
    jr.add(EventType.TOOL_STARTED, call_id="c4", attempt=1, effect="pure")
    jr.add(EventType.TOOL_COMPLETED, call_id="c4", output="ok")
    atom = decide(jr.state, SPEC, 1.0, {"amo": "at_most_once", "idem": "idempotent"})
    assert isinstance(atom, Act)
    plans = {p.call.id: (p.attempt, p.interrupted) for p in atom.plans}
    assert plans == {"c1": (2, True), "c2": (2, False), "c3": (1, False)}


def test_tool_results_enter_transcript_in_call_order() -> None:
    jr = Journal().add(EventType.RUN_CREATED, input="hi").add(EventType.LLM_STARTED, attempt=1)
    jr.add(EventType.LLM_COMPLETED, message=assistant(calls=[("c1", "t"), ("c2", "t")]))
    jr.add(EventType.TOOL_COMPLETED, call_id="c2", name="t", output="two")
    assert jr.state.messages[-1]["role"] == "assistant"  # not until all are done
    jr.add(EventType.TOOL_FAILED, call_id="c1", name="t", error="boom")
    tools = [m for m in jr.state.messages if m["role"] == "tool"]
    assert [(m["tool_call_id"], m["content"], m["is_error"]) for m in tools] == [
        ("c1", "boom", True),
        ("c2", "two", False),
    ]
    assert decide(jr.state, SPEC, 1.0) == Reason(attempt=1)


def test_user_message_mid_call_waits_for_the_boundary() -> None:
    jr = Journal().add(EventType.RUN_CREATED, input="hi").add(EventType.LLM_STARTED, attempt=1)
    jr.add(EventType.MESSAGE_USER, content="also this")
    jr.add(EventType.LLM_COMPLETED, message=assistant("answer"))
    roles = [(m["role"], m["content"]) for m in jr.state.messages]
    assert roles == [("user", "hi"), ("assistant", "answer"), ("user", "also this")]
    assert decide(jr.state, SPEC, 1.0) == Reason(attempt=1)


def test_message_to_completed_run_starts_a_new_turn() -> None:
    jr = Journal().add(EventType.RUN_CREATED, input="hi").add(EventType.LLM_STARTED, attempt=1)
    jr.add(EventType.LLM_COMPLETED, message=assistant("a")).add(EventType.RUN_COMPLETED, result="a")
    assert jr.state.terminal
    jr.add(EventType.MESSAGE_USER, content="more")
    assert jr.state.status == "queued"
    assert decide(jr.state, SPEC, 1.0) == Reason(attempt=1)


def test_retry_backoff_then_give_up() -> None:
    jr = Journal().add(EventType.RUN_CREATED, input="hi")
    jr.add(EventType.LLM_STARTED, attempt=1).add(
        EventType.LLM_FAILED, error="503", retryable=True, retry_at=50.0
    )
    assert decide(jr.state, SPEC, 10.0) == Wait(until=50.0, reason="llm_backoff")
    assert decide(jr.state, SPEC, 60.0) == Reason(attempt=2)
    jr.add(EventType.LLM_STARTED, attempt=2).add(
        EventType.LLM_FAILED, error="503", retryable=True, retry_at=0
    )
    jr.add(EventType.LLM_STARTED, attempt=3).add(
        EventType.LLM_FAILED, error="503", retryable=True, retry_at=0
    )
    atom = decide(jr.state, SPEC, 60.0)
    assert isinstance(atom, Fail) and atom.reason == "llm_error"


def test_non_retryable_failure_fails_fast() -> None:
    jr = Journal().add(EventType.RUN_CREATED, input="hi")
    jr.add(EventType.LLM_STARTED, attempt=1).add(
        EventType.LLM_FAILED, error="bad key", retryable=False
    )
    atom = decide(jr.state, SPEC, 1.0)
    assert atom == Fail("llm_error", "bad key")


def test_limits_stop_before_the_next_call() -> None:
    spec = parse_spec(
        {
            "name": "a",
            "model": {"provider": "scripted", "responses": [{"text": "x"}]},
            "limits": {"max_tokens": 100, "deadline": "10s", "max_steps": 2},
        }
    )
    jr = Journal().add(EventType.RUN_CREATED, input="hi").add(EventType.LLM_STARTED, attempt=1)
    jr.add(
        EventType.LLM_COMPLETED,
        message=assistant(calls=[("c1", "t")]),
        usage={"input_tokens": 90, "output_tokens": 20},
    )
    jr.add(EventType.TOOL_COMPLETED, call_id="c1", output="ok")
    atom = decide(jr.state, spec, 1.0)
    assert isinstance(atom, Fail) and atom.reason == "budget_exceeded"
    assert decide(
        jr.state,
        spec.model_copy(update={"limits": spec.limits.model_copy(update={"max_tokens": None})}),
        11.0,
    ) == Fail("deadline_exceeded", "deadline of 10s reached")


def test_fold_is_deterministic() -> None:
    jr = Journal().add(EventType.RUN_CREATED, input="hi").add(EventType.LLM_STARTED, attempt=1)
    jr.add(EventType.LLM_COMPLETED, message=assistant(calls=[("c1", "t")]))
    jr.add(EventType.TOOL_COMPLETED, call_id="c1", output="ok")
    assert transcript(jr.state) == transcript(fold(list(jr.events)))
