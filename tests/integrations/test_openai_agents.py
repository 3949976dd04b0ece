"""OpenAI Agents SDK agents run durably: a triage agent hands off to a booking agent with
an idempotent and an at_most_once tool (tests/tooling/oa_agents.py), on the SDK's own
chat-completions model against a real loopback HTTP server (helpers.FakeOpenAI, which
streams: the durable loop always runs streamed). Also: the SDK's `needs_approval`, Handoff
objects, agents as tools, structured output, MCP servers (a real stdio server process),
the crash matrix on both databases, replay checks, budgets, and a by-reference run through
the API with live deltas and an approval across a server restart."""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from agents import (
    Agent,
    ModelSettings,
    OpenAIChatCompletionsModel,
    function_tool,
    handoff,
    retry_policies,
)
from agents.retry import ModelRetrySettings
from openai import AsyncOpenAI
from pydantic import BaseModel

from everruns.client import Client
from everruns.core.events import INTERRUPTED_MESSAGE, EventType
from everruns.engine.worker import Worker
from everruns.integrations import EverrunsRunError
from everruns.integrations.openai_agents import EverrunsRunner, everruns_tool
from everruns.spec import AgentSpec
from everruns.store import Store
from everruns.testing._procs import KILLED, run_worker, worker_env
from everruns.testing.effects import read as read_ledger
from everruns.testing.matrix import CaseResult, check_case
from everruns.testing.runs import run_to_end
from helpers import TOOLING, FakeOpenAI, Server, cli, env_for, wait_until

pytestmark = pytest.mark.timeout(180)

SPEC = {"name": "triage", "agent": {"python": "oa_agents:triage", "framework": "openai_agents"}}
WANT = "Weather: Rome: sunny, 24C Booking: booked 2 nights in Rome"


def _results(body: dict[str, Any], *ids: str) -> list[str]:
    """The tool results sent back for these calls (an MCP result comes as content parts)."""
    out = []
    for m in body["messages"]:
        if m["role"] == "tool" and m["tool_call_id"] in ids:
            content = m["content"]
            out.append(content if isinstance(content, str) else "".join(p["text"] for p in content))
    return out


def _call(call_id: str, name: str, **arguments: Any) -> dict[str, Any]:
    return {"tool_calls": [{"id": call_id, "name": name, "arguments": arguments}]}


def answer(body: dict[str, Any]) -> dict[str, Any]:
    """The model of oa_agents: triage hands off; booking looks up the weather, books,
    answers with both; the concierge looks up a restaurant (MCP), reserves, answers."""
    tools = {t["function"]["name"] for t in body.get("tools") or []}
    if "transfer_to_booking_agent" in tools:
        return _call("call_t", "transfer_to_booking_agent")
    if "greet" in tools:  # the greeter: greet, then answer with the greeting
        greeted = _results(body, "call_g")
        system = next(m["content"] for m in body["messages"] if m["role"] == "system")
        return {"content": f"{greeted[0]} | {system}"} if greeted else _call("call_g", "greet")
    if "lookup" in tools:
        found = _results(body, "call_l", "call_r")
        if not found:
            return _call("call_l", "lookup", city="Rome")
        if len(found) == 1:
            return _call("call_r", "reserve", restaurant=found[0], guests=4)
        return {"content": f"Table: {found[1]}"}
    results = _results(body, "call_w", "call_b")
    if not results:
        return _call("call_w", "weather", city="Rome")
    if len(results) == 1:
        return _call("call_b", "book_hotel", city="Rome", nights=2)
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


def _agents() -> Any:
    import oa_agents

    return importlib.reload(oa_agents)  # its models talk to this test's server


async def _events(db_url: str, run_id: str) -> list[Any]:
    async with await Store.open(db_url) as store:
        return await store.load_events(run_id)


# ---------------------------------------------------------------- in-process runs


async def test_drop_in_runner_with_a_handoff_is_journaled(
    db_url: str, fake_openai: FakeOpenAI
) -> None:
    oa_agents = _agents()
    result = await EverrunsRunner.run(oa_agents.triage, "Plan Rome", run_id="rome-1", db=db_url)
    assert result.final_output == WANT
    assert result.last_agent.name == "Booking agent"
    assert [r.get("stream") for r in fake_openai.requests] == [True] * 4  # streamed live
    sent = len(fake_openai.requests)
    again = await EverrunsRunner.run(oa_agents.triage, "Plan Rome", run_id="rome-1", db=db_url)
    assert again.final_output == WANT and len(fake_openai.requests) == sent  # from the journal
    events = await _events(db_url, "rome-1")
    calls = [
        c["name"]
        for e in events
        if e.type == EventType.LLM_COMPLETED
        for c in e.data["message"].get("tool_calls") or []
    ]
    assert calls == ["transfer_to_booking_agent", "weather", "book_hotel"]
    started = {e.data["name"]: e.data["effect"] for e in events if e.type == "tool.started"}
    assert started == {"weather": "idempotent", "book_hotel": "at_most_once"}
    completed = [e for e in events if e.type == EventType.LLM_COMPLETED]
    assert all(e.data["usage"]["cost_usd"] > 0 for e in completed)
    assert completed[-1].data["message"]["content"] == WANT


async def test_run_streamed_yields_the_sdk_events_live_then_replayed(
    db_url: str, fake_openai: FakeOpenAI
) -> None:
    """Live: the SDK's own stream events (text deltas, run items, the agent switch) of the
    durable run. Again with the same run_id (finished): the same run items, each journaled
    answer as one response.completed and no delta, no request sent."""
    oa_agents = _agents()
    streamed = EverrunsRunner.run_streamed(oa_agents.triage, "Plan Rome", run_id="s-1", db=db_url)
    assert streamed.final_output is None and not streamed.is_complete
    live = [e async for e in streamed.stream_events()]
    deltas = [
        e.data.delta
        for e in live
        if e.type == "raw_response_event" and e.data.type == "response.output_text.delta"
    ]
    assert len(deltas) > 1 and "".join(deltas) == WANT
    assert [e.new_agent.name for e in live if e.type == "agent_updated_stream_event"] == [
        "Triage",
        "Booking agent",
    ]
    items = [e.name for e in live if e.type == "run_item_stream_event"]
    assert items == [
        "handoff_requested",
        "handoff_occured",
        "tool_called",
        "tool_output",
        "tool_called",
        "tool_output",
        "message_output_created",
    ]
    assert streamed.is_complete and streamed.final_output == WANT
    assert streamed.last_agent.name == "Booking agent" and streamed.run_id == "s-1"
    assert streamed.to_input_list()[-1]["content"][0]["text"] == WANT
    sent = len(fake_openai.requests)

    replayed = EverrunsRunner.run_streamed(oa_agents.triage, "Plan Rome", run_id="s-1", db=db_url)
    again = [e async for e in replayed.stream_events()]
    raw = [e.data.type for e in again if e.type == "raw_response_event"]
    assert raw == ["response.completed"] * 4 and len(fake_openai.requests) == sent
    assert [e.name for e in again if e.type == "run_item_stream_event"] == items
    assert replayed.final_output == WANT


def test_run_sync_and_what_is_refused(sqlite_url: str, fake_openai: FakeOpenAI) -> None:
    oa_agents = _agents()
    result = EverrunsRunner.run_sync(oa_agents.triage, "Plan Rome", run_id="sync-1", db=sqlite_url)
    assert result.final_output == WANT
    with pytest.raises(TypeError, match="session=: the run's journal is its memory"):
        EverrunsRunner.run_sync(oa_agents.triage, "x", session=object())
    with pytest.raises(TypeError, match="max_turns=: the everruns spec's limits"):
        EverrunsRunner.run_streamed(oa_agents.triage, "x", max_turns=3)
    with pytest.raises(TypeError, match="takes the user's message as a string"):
        EverrunsRunner.run_sync(oa_agents.triage, [{"role": "user", "content": "x"}])


async def test_needs_approval_parks_the_run_and_a_denial_tells_the_model(
    db_url: str, fake_openai: FakeOpenAI
) -> None:
    """`function_tool(needs_approval=True)` parks the run like `approvals=[...]`: waiting,
    nothing booked; denied, the model gets the human's reason as the tool's result."""
    oa_agents = _agents()
    with pytest.raises(EverrunsRunError) as parked:
        await EverrunsRunner.run(oa_agents.careful, "Plan Rome", run_id="c-1", db=db_url)
    assert parked.value.status == "waiting"
    async with await Store.open(db_url) as store:
        events = await store.load_events("c-1")
        assert [e.type for e in events][-2:] == [
            EventType.APPROVAL_REQUESTED,
            EventType.RUN_WAITING,
        ]
        assert events[-2].data["name"] == "book_hotel" and events[-2].data["call_id"] == "call_b"
        assert (await store.get_run("c-1")).lease_owner is None
        await store.signal(
            "c-1", EventType.APPROVAL_DENIED, {"call_id": "call_b", "reason": "too expensive"}
        )
    result = await EverrunsRunner.run(oa_agents.careful, "Plan Rome", run_id="c-1", db=db_url)
    assert (
        result.final_output == "Weather: Rome: sunny, 24C Booking: denied by a human: too expensive"
    )
    started = [e.data["name"] for e in await _events(db_url, "c-1") if e.type == "tool.started"]
    assert started == ["weather"]


async def test_approval_parks_the_run_and_a_grant_resumes_it(
    db_url: str, fake_openai: FakeOpenAI
) -> None:
    """`approvals=[...]`; the SDK wraps what a tool raises in its own error: the park
    still reaches everruns."""
    oa_agents = _agents()
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
    assert result.final_output == WANT


class Reason(BaseModel):
    reason: str


class Booking(BaseModel):
    city: str
    nights: int
    confirmation: str


def graph_answer(body: dict[str, Any]) -> dict[str, Any]:
    """The model of the front desk (asks the researcher agent as a tool, then hands off
    with a reason), the researcher, and the booking agent (books, answers in JSON)."""
    system = body["messages"][0]["content"]
    if system == "Research cities.":
        return {"content": "Rome has 3 museums"}
    if system == "Greet guests.":
        if not _results(body, "call_r"):
            return _call("call_r", "research", input="Rome")
        return _call("call_h", "to_booking", reason="wants a room")
    booked = _results(body, "call_k")
    if not booked:
        return _call("call_k", "book", city="Rome", nights=2)
    return {"content": json.dumps({"city": "Rome", "nights": 2, "confirmation": booked[0]})}


async def test_handoff_objects_agents_as_tools_and_structured_output(db_url: str) -> None:
    """A `handoff(agent, on_handoff=..., input_type=...)` goes to the durable copy (the
    booking agent's calls are journaled); an agent used as a tool is one at_most_once call
    (its own model request inside it); a callable `needs_approval` that says no does not
    park; the structured output is the run's JSON result. Replayed: nothing is sent or
    booked again, the on_handoff callback runs again (it is not journaled)."""
    server = FakeOpenAI(graph_answer, usage=(50, 5))
    client = AsyncOpenAI(base_url=server.url, api_key="test")
    model = OpenAIChatCompletionsModel("gpt-4.1", client)
    handed: list[str] = []
    booked: list[int] = []

    async def large(ctx: Any, params: dict[str, Any], call_id: str) -> bool:
        return bool(params["nights"] > 5)

    @everruns_tool(effect="idempotent")
    @function_tool(needs_approval=large)
    def book(city: str, nights: int) -> str:
        """Book a room."""
        booked.append(nights)
        return f"booked {nights} nights"

    def on_handoff(ctx: Any, data: Reason) -> None:
        handed.append(data.reason)

    booking = Agent(
        name="Booking agent", instructions="Book.", model=model, tools=[book], output_type=Booking
    )
    researcher = Agent(name="Researcher", instructions="Research cities.", model=model)
    front = Agent(
        name="Front desk",
        instructions="Greet guests.",
        model=model,
        tools=[researcher.as_tool("research", "Research a city")],
        handoffs=[
            handoff(
                booking, on_handoff=on_handoff, input_type=Reason, tool_name_override="to_booking"
            )
        ],
    )
    try:
        result = await EverrunsRunner.run(front, "A room in Rome", run_id="g-1", db=db_url)
        want = Booking(city="Rome", nights=2, confirmation="booked 2 nights")
        assert result.final_output == want and result.last_agent.name == "Booking agent"
        assert handed == ["wants a room"] and booked == [2]
        assert len(server.requests) == 5  # front desk 2, researcher 1, booking 2
        again = await EverrunsRunner.run(front, "A room in Rome", run_id="g-1", db=db_url)
        assert again.final_output == want and len(server.requests) == 5 and booked == [2]
        assert handed == ["wants a room"] * 2
    finally:
        server.close()
    async with await Store.open(db_url) as store:
        row = await store.get_run("g-1")
        events = await store.load_events("g-1")
    assert row.status == "completed" and json.loads(row.result or "") == want.model_dump()
    types = [e.type for e in events]
    assert types.count(EventType.LLM_COMPLETED) == 4 and EventType.APPROVAL_REQUESTED not in types
    started = {e.data["name"]: e.data["effect"] for e in events if e.type == "tool.started"}
    assert started == {"research": "at_most_once", "book": "idempotent"}
    research = next(
        e for e in events if e.type == "tool.completed" and e.data["name"] == "research"
    )
    assert research.data["value"] == "Rome has 3 museums"


async def test_changed_agent_is_reported_non_deterministic(
    db_url: str, fake_openai: FakeOpenAI
) -> None:
    """A second message continues with the agent that answered; the agent's code changed
    under the run, the replay fails the run at the first request that differs."""
    oa_agents = _agents()
    await EverrunsRunner.run(oa_agents.triage, "Plan Rome", run_id="nd-1", db=db_url)
    async with await Store.open(db_url) as store:
        await store.signal("nd-1", EventType.MESSAGE_USER, {"content": "And the weather?"})
        await run_to_end(store, "nd-1")
        row = await store.get_run("nd-1")
    assert row.status == "completed" and row.result == WANT  # the booking agent answered again
    changed = oa_agents.triage.clone(instructions="Route the user, politely.")
    async with await Store.open(db_url) as store:
        await store.signal("nd-1", EventType.MESSAGE_USER, {"content": "And Milan?"})
    with pytest.raises(EverrunsRunError) as failed:
        await EverrunsRunner.run(changed, "Plan Rome", run_id="nd-1", db=db_url)
    error = failed.value.error or {}
    assert failed.value.status == "failed" and error["reason"] == "non_deterministic_replay"
    assert error["message"].startswith("non-deterministic replay at step 1: message 1")
    assert "Route the user, politely." in error["message"]


async def test_a_failed_request_the_sdk_retries_keeps_the_step_numbers(db_url: str) -> None:
    """The SDK's own model retry (ModelSettings.retry): the failed attempt is journaled
    (`llm.failed`) and its retry is the same step, so a second message replays the
    conversation and the next live request is step 3 (no step is "called again")."""
    sent: list[int] = []

    def flaky(body: dict[str, Any]) -> dict[str, Any]:
        sent.append(len(sent) + 1)
        if len(sent) == 1:
            return {"status": 500, "message": "overloaded"}
        return {"content": f"answer {len(sent)}"}

    server = FakeOpenAI(flaky, usage=(10, 2))
    client = AsyncOpenAI(base_url=server.url, api_key="test", max_retries=0)
    retry = ModelRetrySettings(max_retries=2, policy=retry_policies.http_status([500]))
    agent = Agent(
        name="Flaky",
        instructions="Answer.",
        model=OpenAIChatCompletionsModel("gpt-4.1", client),
        model_settings=ModelSettings(retry=retry),
    )
    try:
        first = await EverrunsRunner.run(agent, "hi", run_id="f-1", db=db_url)
        assert first.final_output == "answer 2" and len(sent) == 2
        async with await Store.open(db_url) as store:
            await store.signal("f-1", EventType.MESSAGE_USER, {"content": "again"})
        again = await EverrunsRunner.run(agent, "hi", run_id="f-1", db=db_url)
        assert again.final_output == "answer 3" and len(sent) == 3  # step 1 replayed
    finally:
        server.close()
    events = await _events(db_url, "f-1")
    steps = [(e.type, e.data.get("step")) for e in events if e.type.startswith("llm.")]
    assert steps == [
        ("llm.started", 1),
        ("llm.failed", None),
        ("llm.started", 1),
        ("llm.completed", None),
        ("llm.started", 2),
        ("llm.completed", None),
    ]


async def test_a_budget_limit_stops_the_run(db_url: str, fake_openai: FakeOpenAI) -> None:
    oa_agents = _agents()
    with pytest.raises(EverrunsRunError) as failure:
        await EverrunsRunner.run(
            oa_agents.triage, "Plan Rome", run_id="b-1", db=db_url, limits={"max_llm_calls": 2}
        )
    assert failure.value.status == "failed"
    assert failure.value.error and failure.value.error["reason"] == "budget_exceeded"
    types = [e.type for e in await _events(db_url, "b-1")]
    assert types.count(EventType.LLM_COMPLETED) == 2 and "tool.started" in types
    assert len(fake_openai.requests) == 2


async def test_cancel_interrupts_the_in_flight_streamed_request(
    db_url: str, fake_openai: FakeOpenAI
) -> None:
    """The model's stream is held open: a cancel ends the run at once (the streamed request
    and the SDK's own run task are cancelled), nothing journaled after llm.started."""
    _agents()
    spec = AgentSpec.model_validate(SPEC)
    fake_openai.hold.clear()
    async with await Store.open(db_url) as store:
        run_id = await store.create_run(spec, "Plan Rome")
        worker = Worker(store, concurrency=1, lease_ttl=2, poll_interval=0.05, only=[run_id])
        task = asyncio.create_task(worker.run())
        try:

            async def asked() -> bool:
                return len(fake_openai.requests) == 1

            async def cancelled() -> bool:
                return (await store.get_run(run_id)).status == "cancelled"

            await wait_until(asked, timeout=30, what="the model asked")
            await store.cancel(run_id)
            await wait_until(cancelled, timeout=30, what="the run cancelled")
        finally:
            fake_openai.hold.set()
            worker.stop()
            await task
        types = [e.type for e in await store.load_events(run_id)]
    assert types[-2:] == [EventType.LLM_STARTED, EventType.RUN_CANCELLED]


# ---------------------------------------------------------------- worker processes


async def test_crash_matrix_with_a_handoff(
    db_url: str, tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    """The crash matrix's two tool boundaries, chained in one run to save worker processes:
    the first worker is SIGKILLed after the idempotent weather ran (its result not
    journaled); the second takes over (replaying the handoff and the streamed answers),
    runs the weather again with the same idempotency key, and is SIGKILLed after the
    at_most_once booking charged; the third answers "outcome unknown" for the booking and
    finishes. Checked against the uncrashed run (executed in this process) with the
    matrix's own checks: the same transcript, no completed call repeated, at_most_once
    never twice, one charge."""
    _agents()
    spec = AgentSpec.model_validate(SPEC)
    ledger = tmp_path / "ledger.jsonl"
    async with await Store.open(db_url) as store:
        reference_id = await store.create_run(spec, "Plan Rome")
        await run_to_end(store, reference_id)
        run_id = await store.create_run(spec, "Plan Rome")
        for n, point in enumerate(["before:tool.completed#1", "before:tool.completed#2", None]):
            log = tmp_path / f"worker-{n}.log"
            code = await run_worker(db_url, run_id, worker_env(ledger, point), log, 0.5, 60)
            assert code == (KILLED if point else 0), log.read_text()[-3000:]
        reference = await store.load_events(reference_id)
        events = await store.load_events(run_id)
        status = (await store.get_run(run_id)).status
    assert reference[-1].data["result"] == WANT
    case = CaseResult("chained", run_id, True, status, events, read_ledger(ledger))
    uncrashed = CaseResult("reference", reference_id, False, "completed", reference, [])
    assert check_case(uncrashed, case) == []
    assert events[-1].data["result"] == "Weather: Rome: sunny, 24C Booking: " + INTERRUPTED_MESSAGE
    assert [e.data["takeover"] for e in events if e.type == "run.started"] == [False, True, True]
    weather = [x for x in case.ledger if x["kind"] == "exec" and x["tool"] == "weather"]
    assert [r["attempt"] for r in weather] == [1, 2]  # idempotent: run again, same key
    assert len({r["idempotency_key"] for r in weather}) == 1
    charges = [x for x in case.ledger if x["kind"] == "effect" and x["tool"] == "book_hotel"]
    assert len(charges) == 1


async def test_mcp_tools_are_journaled_and_an_at_most_once_call_is_not_repeated(
    sqlite_url: str, tmp_path: Path, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The concierge's tools come from a real stdio MCP server the worker connects: a
    worker SIGKILLed after the server made the reservation (not journaled yet); the next
    worker reconnects, replays the lookup and answers "outcome unknown" for the
    reservation, which the server made exactly once. SQLite only, to save two worker
    processes: MCP calls are journaled by the same session code as function tools, whose
    crash matrix runs on both databases (the API test below runs on PostgreSQL)."""
    db_url = sqlite_url
    reservations = tmp_path / "reservations.jsonl"
    monkeypatch.setenv("OA_MCP_LEDGER", str(reservations))
    spec = {
        "name": "concierge",
        "agent": {
            "python": "oa_agents:concierge",
            "framework": "openai_agents",
            "effects": {"lookup": "pure"},
        },
    }
    ledger = tmp_path / "ledger.jsonl"
    async with await Store.open(db_url) as store:
        run_id = await store.create_run(AgentSpec.model_validate(spec), "Dinner in Rome")
        killed = worker_env(ledger, "before:tool.completed#2")
        code = await run_worker(db_url, run_id, killed, tmp_path / "killed.log", 0.5, 60)
        assert code == KILLED, (tmp_path / "killed.log").read_text()[-3000:]
        code = await run_worker(db_url, run_id, worker_env(ledger), tmp_path / "w.log", 1.0, 60)
        assert code == 0, (tmp_path / "w.log").read_text()[-3000:]
        row = await store.get_run(run_id)
        events = await store.load_events(run_id)
    assert row.status == "completed" and row.result == "Table: " + INTERRUPTED_MESSAGE
    made = [json.loads(line) for line in reservations.read_text().splitlines()]
    assert [(m["restaurant"], m["guests"]) for m in made] == [("Trattoria Rome", 4)]
    started = [(e.data["name"], e.data["effect"]) for e in events if e.type == "tool.started"]
    assert started == [("lookup", "pure"), ("reserve", "at_most_once")]
    failed = [e.data for e in events if e.type == EventType.TOOL_FAILED]
    assert [(f["name"], f.get("interrupted")) for f in failed] == [("reserve", True)]
    runs = [(x["tool"], x["attempt"]) for x in read_ledger(ledger) if x["kind"] == "exec"]
    assert runs == [("lookup", 1), ("reserve", 1)]


async def test_an_mcp_servers_require_approval_parks_the_run(
    sqlite_url: str, tmp_path: Path, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In process, with a server the run connects itself (and closes): the MCP server's
    `require_approval` parks the run before the reservation; granted, the run resumes
    (the server started again) and the server reserves once. SQLite only: the park and
    the grant are the function tools' path, tested on both databases above."""
    from agents.mcp import MCPServerStdio

    reservations = tmp_path / "reservations.jsonl"
    monkeypatch.setenv("OA_MCP_LEDGER", str(reservations))
    params: Any = {
        "command": sys.executable,
        "args": [str(TOOLING / "oa_mcp.py")],
        "env": dict(os.environ),
    }
    server = MCPServerStdio(params, require_approval={"always": {"tool_names": ["reserve"]}})
    agent = _agents().concierge.clone(mcp_servers=[server])
    with pytest.raises(EverrunsRunError) as parked:
        await EverrunsRunner.run(agent, "Dinner in Rome", run_id="m-1", db=sqlite_url)
    assert parked.value.status == "waiting" and not reservations.exists()
    assert server.session is None  # closed with the run
    async with await Store.open(sqlite_url) as store:
        asked = [e.data for e in await store.load_events("m-1") if e.type == "approval.requested"]
        assert [(a["name"], a["call_id"]) for a in asked] == [("reserve", "call_r")]
        await store.signal("m-1", EventType.APPROVAL_GRANTED, {"call_id": "call_r"})
    result = await EverrunsRunner.run(agent, "Dinner in Rome", run_id="m-1", db=sqlite_url)
    assert result.final_output == "Table: table for 4 at Trattoria Rome"
    assert len(reservations.read_text().splitlines()) == 1


def test_started_by_reference_streams_live_and_an_approval_survives_a_restart(
    pg_url: str, tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    """`agent: {python: "oa_agents:careful", framework: openai_agents}` through the HTTP API
    (the server's embedded worker imports it): the SDK's needs_approval parks the run with
    no worker held; the server is SIGKILLed and restarted; `everruns approve` resumes it;
    the final answer streams to the API's live feed as llm.delta events while the model
    answers; the journal is visible through the API and `everruns events`. PostgreSQL
    only (two server processes): the approval's park and resume run on both databases in
    process, above."""
    db_url = pg_url
    ledger = tmp_path / "ledger.jsonl"
    env = env_for(db_url, PAI_OPENAI_URL=fake_openai.url, EVERRUNS_TESTING_LEDGER=str(ledger))
    spec = {
        "name": "careful",
        "agent": {"python": "oa_agents:careful", "framework": "openai_agents"},
    }
    server = Server(env, "--lease-ttl", "2", log=tmp_path / "server.log")
    try:
        with Client(server.url) as client:
            run = client.runs.start(spec=spec, input="Plan Rome")

            def parked() -> bool:
                return client.runs.get(run.id).status == "waiting"

            wait_sync(parked, "the run parked on the approval")
            assert client.runs.get(run.id).lease_owner is None
            asked = [e for e in client.runs.events(run.id) if e.type == "approval.requested"]
            assert [(e.data["name"], e.data["call_id"]) for e in asked] == [
                ("book_hotel", "call_b")
            ]
            server.restart()
            fake_openai.hold.clear()  # the final answer waits until the feed is open
            approved = cli("approve", run.id, "call_b", "--db", db_url, env=env)
            assert approved.returncode == 0, approved.stderr
            live = []
            for event in client.runs.stream(run.id):
                fake_openai.hold.set()
                live.append(event)
            done = client.runs.wait(run.id, timeout=60)
            journal = client.runs.events(run.id)
    finally:
        fake_openai.hold.set()
        server.stop()
    assert done.status == "completed", (tmp_path / "server.log").read_text()[-3000:]
    assert done.result == WANT and done.steps == 3 and done.usage.total_tokens == 330
    deltas = [e.data["text"] for e in live if e.ephemeral and e.type == "llm.delta"]
    assert len(deltas) > 1 and "".join(deltas) == WANT
    assert [e.type for e in live if not e.ephemeral] == [e.type for e in journal]
    types = [e.type for e in journal]
    assert types[:2] == ["run.created", "run.started"] and types[-1] == "run.completed"
    assert types.count("approval.granted") == 1 and types.count("tool.completed") == 2
    charges = [x for x in read_ledger(ledger) if x["kind"] == "effect"]
    assert len(charges) == 1  # booked once, after the approval
    shown = cli("events", run.id, "--db", db_url, env=env)
    assert shown.returncode == 0, shown.stderr
    assert "book_hotel" in shown.stdout and "(at_most_once)" in shown.stdout
    assert "weather" in shown.stdout and "(idempotent)" in shown.stdout


def wait_sync(predicate: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


# ---------------------------------------------------------------- the run context


async def test_the_run_context_travels_with_the_run(db_url: str, fake_openai: FakeOpenAI) -> None:
    """`context=`: journaled as JSON in run.created; the execution gets it back as
    `context_type` (a Traveller in the tool and the instructions), else as the JSON value
    (a dict); a `context_factory` builds a context that cannot be JSON in each execution
    from the journaled value. The same run again with another context: refused; a context
    that is not JSON without a factory: refused, saying why; a ref whose agent lacks the
    context_type: refused."""
    oa_agents = _agents()
    Traveller = oa_agents.Traveller
    ada = Traveller("Ada", "Rome")
    typed = await EverrunsRunner.run(
        oa_agents.greeter, "Hi", context=ada, context_type=Traveller, run_id="c-1", db=db_url
    )
    assert typed.final_output == "hello Ada in Rome (Traveller) | You greet Ada."
    events = await _events(db_url, "c-1")
    assert events[0].data["deps"] == {"name": "Ada", "city": "Rome"}
    sent = len(fake_openai.requests)
    again = await EverrunsRunner.run(oa_agents.greeting, "Hi", context=ada, run_id="c-1", db=db_url)
    assert again.final_output == typed.final_output and len(fake_openai.requests) == sent
    streamed = EverrunsRunner.run_streamed(oa_agents.greeting, "Hi", run_id="c-1", db=db_url)
    assert [
        e async for e in streamed.stream_events()
    ] and streamed.final_output == again.final_output
    with pytest.raises(ValueError, match=r"run c-1 was created with context .*Ada.*Bob"):
        await EverrunsRunner.run(
            oa_agents.greeting, "Hi", context=Traveller("Bob", "Rome"), run_id="c-1", db=db_url
        )
    plain = await EverrunsRunner.run(oa_agents.greeter, "Hi", context=ada, run_id="c-2", db=db_url)
    assert plain.final_output.startswith("hello Ada in Rome (dict)")  # no context_type

    class Desk:  # a live object: cannot be JSON
        def __init__(self, run_id: str, value: Any):
            self.name, self.city = f"{value['name']} of {run_id}", value["city"]
            self.lock = threading.Lock()

    built: list[tuple[str, Any]] = []

    def desk(run_id: str, value: Any) -> Desk:
        built.append((run_id, value))
        return Desk(run_id, value)

    with pytest.raises(
        TypeError, match=r"context: a Desk cannot be journaled as JSON.*context_factory=fn"
    ):
        await EverrunsRunner.run(
            oa_agents.greeter, "Hi", context=Desk("x", {"name": "A", "city": "B"})
        )
    live = await EverrunsRunner.run(
        oa_agents.greeter,
        "Hi",
        context={"name": "Cy", "city": "Oslo"},
        context_factory=desk,
        run_id="c-3",
        db=db_url,
    )
    assert live.final_output == "hello Cy of c-3 in Oslo (Desk) | You greet Cy of c-3."
    await EverrunsRunner.run(oa_agents.greeter, "Hi", context_factory=desk, run_id="c-3", db=db_url)
    assert built == [("c-3", {"name": "Cy", "city": "Oslo"})] * 2  # each execution builds it
    with pytest.raises(TypeError, match=r"context_type: ref 'oa_agents:greeter' names an agent"):
        await EverrunsRunner.run(
            oa_agents.greeter, "Hi", context=ada, context_type=Traveller, ref="oa_agents:greeter"
        )


async def test_a_taking_over_worker_process_rebuilds_the_context_from_the_journal(
    sqlite_url: str, tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    """A by-reference run of a DurableAgent (tests/tooling/oa_agents.py: greeting, with its
    context_type) with a context in run.created, as `EverrunsRunner.run(context=...)`
    journals it: the first worker process is SIGKILLed after the idempotent tool ran (its
    result not journaled); the next one rebuilds the context from the journal (the
    instructions made from it match the journaled request: the first answer is replayed)
    and its tool sees the same Traveller. SQLite only, to save two worker processes (the
    in-process context tests run on both databases; Pydantic AI's crash case on PostgreSQL)."""
    _agents()
    spec = AgentSpec.model_validate(
        {"name": "greeter", "agent": {"python": "oa_agents:greeting", "framework": "openai_agents"}}
    )
    ledger = tmp_path / "ledger.jsonl"
    traveller = {"name": "Ada", "city": "Rome"}
    async with await Store.open(sqlite_url) as store:
        run_id = await store.create_run(spec, "Hi", created_data={"deps": traveller})
        for n, point in enumerate(["before:tool.completed#1", None]):
            log = tmp_path / f"worker-{n}.log"
            code = await run_worker(sqlite_url, run_id, worker_env(ledger, point), log, 0.5, 60)
            assert code == (KILLED if point else 0), log.read_text()[-3000:]
        row = await store.get_run(run_id)
        events = await store.load_events(run_id)
    assert row.status == "completed", row.error
    assert row.result == "hello Ada in Rome (Traveller) | You greet Ada."
    seen = [x for x in read_ledger(ledger) if x["kind"] == "context"]
    assert [(x["type"], x["name"]) for x in seen] == [("Traveller", "Ada")] * 2
    assert len({x["pid"] for x in seen}) == 2  # two worker processes, each rebuilt it
    assert [e.data["takeover"] for e in events if e.type == "run.started"] == [False, True]
    assert [e.data["step"] for e in events if e.type == EventType.LLM_STARTED] == [1, 2]
    assert len(fake_openai.requests) == 2  # the first answer was replayed, not asked again
