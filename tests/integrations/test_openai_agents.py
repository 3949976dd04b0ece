"""OpenAI Agents SDK agents run durably: a triage agent hands off to a booking agent with
an idempotent and an at_most_once tool (tests/tooling/oa_agents.py), on the SDK's own
chat-completions model against a real loopback HTTP server (helpers.FakeOpenAI)."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from everruns.core.events import INTERRUPTED_MESSAGE, EventType
from everruns.integrations import EverrunsRunError
from everruns.integrations.openai_agents import EverrunsRunner
from everruns.store import Store
from everruns.testing.matrix import acrash_matrix, assert_exactly_once
from helpers import TOOLING, FakeOpenAI

pytestmark = pytest.mark.timeout(180)

SPEC = {"name": "triage", "agent": {"python": "oa_agents:triage", "framework": "openai_agents"}}


def answer(body: dict[str, Any]) -> dict[str, Any]:
    tools = {t["function"]["name"] for t in body.get("tools") or []}
    if "transfer_to_booking_agent" in tools:
        call = {"id": "call_t", "name": "transfer_to_booking_agent", "arguments": {}}
        return {"tool_calls": [call]}
    results = [
        m["content"]
        for m in body["messages"]
        if m["role"] == "tool" and m["tool_call_id"] in ("call_w", "call_b")
    ]
    if not results:
        return {"tool_calls": [{"id": "call_w", "name": "weather", "arguments": {"city": "Rome"}}]}
    if len(results) == 1:
        call = {"id": "call_b", "name": "book_hotel", "arguments": {"city": "Rome", "nights": 2}}
        return {"tool_calls": [call]}
    return {"content": f"Weather: {results[0]} Booking: {results[1]}"}


@pytest.fixture
def fake_openai(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAI]:
    server = FakeOpenAI(answer, usage=(100, 10))
    monkeypatch.setenv("PAI_OPENAI_URL", server.url)
    monkeypatch.syspath_prepend(str(TOOLING))
    try:
        yield server
    finally:
        server.close()


async def test_drop_in_runner_with_a_handoff_is_journaled(
    db_url: str, fake_openai: FakeOpenAI
) -> None:
    import oa_agents

    oa_agents = importlib.reload(oa_agents)  # its model talks to this test's server
    result = await EverrunsRunner.run(oa_agents.triage, "Plan Rome", run_id="rome-1", db=db_url)
    want = "Weather: Rome: sunny, 24C Booking: booked 2 nights in Rome"
    assert result.final_output == want
    assert result.last_agent.name == "Booking agent"
    sent = len(fake_openai.requests)
    again = await EverrunsRunner.run(oa_agents.triage, "Plan Rome", run_id="rome-1", db=db_url)
    assert again.final_output == want and len(fake_openai.requests) == sent  # from the journal
    async with await Store.open(db_url) as store:
        events = await store.load_events("rome-1")
    calls = [
        c["name"]
        for e in events
        if e.type == EventType.LLM_COMPLETED
        for c in e.data["message"].get("tool_calls") or []
    ]
    assert calls == ["transfer_to_booking_agent", "weather", "book_hotel"]
    started = {e.data["name"]: e.data["effect"] for e in events if e.type == "tool.started"}
    assert started == {"weather": "idempotent", "book_hotel": "at_most_once"}
    assert all(e.data["usage"]["cost_usd"] > 0 for e in events if e.type == EventType.LLM_COMPLETED)


async def test_crash_matrix_with_a_handoff(
    sqlite_url: str, tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    """SIGKILL where each tool ran and its result was not journaled: the idempotent one runs
    again, the at_most_once booking never (outcome unknown); nothing completed repeats.
    SQLite only, to save worker processes: the framework's replay is the same code on both
    databases, and the Pydantic AI matrix runs on both."""
    db_url = sqlite_url
    only = ["before:tool.completed#1", "before:tool.completed#2"]
    report = await acrash_matrix(SPEC, "Plan Rome", db=db_url, only=only, tmp=tmp_path)
    assert_exactly_once(report)
    assert sorted(c.point for c in report.cases) == only and all(c.reached for c in report.cases)
    result = report.reference.events[-1].data["result"]
    assert result == "Weather: Rome: sunny, 24C Booking: booked 2 nights in Rome"
    for case in report.cases:
        charges = [x for x in case.ledger if x["kind"] == "effect" and x["tool"] == "book_hotel"]
        assert len(charges) == 1, (case.point, case.ledger)
        final = case.events[-1].data["result"]
        if case.point == "before:tool.completed#2":
            assert final == "Weather: Rome: sunny, 24C Booking: " + INTERRUPTED_MESSAGE
        else:
            assert final == result


async def test_approval_parks_the_run_and_a_grant_resumes_it(
    db_url: str, fake_openai: FakeOpenAI
) -> None:
    """The SDK wraps what a tool raises in its own error: the park still reaches everruns."""
    import oa_agents

    oa_agents = importlib.reload(oa_agents)
    with pytest.raises(EverrunsRunError) as parked:
        await EverrunsRunner.run(
            oa_agents.triage, "Plan Rome", run_id="r-2", db=db_url, approvals=["book_hotel"]
        )
    assert parked.value.status == "waiting"
    async with await Store.open(db_url) as store:
        types = [e.type for e in await store.load_events("r-2")]
        assert types[-2:] == [EventType.APPROVAL_REQUESTED, EventType.RUN_WAITING]
        await store.signal("r-2", EventType.APPROVAL_GRANTED, {"call_id": "call_b"})
    result = await EverrunsRunner.run(
        oa_agents.triage, "Plan Rome", run_id="r-2", db=db_url, approvals=["book_hotel"]
    )
    assert result.final_output == "Weather: Rome: sunny, 24C Booking: booked 2 nights in Rome"
