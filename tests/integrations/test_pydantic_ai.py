"""Pydantic AI agents run durably: journaled, replayed after a crash, budgeted, visible.

The agent (tests/tooling/pai_agents.py) uses Pydantic AI's own OpenAI chat model
against a real loopback HTTP server (helpers.FakeOpenAI) whose answer depends on the
conversation it is sent: look up the weather (idempotent), book a hotel (at_most_once,
it records a charge), then answer with both results.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic_ai import Agent
from pydantic_ai.messages import ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from everruns.client import Client
from everruns.core.events import INTERRUPTED_MESSAGE, EventType
from everruns.engine.worker import Worker
from everruns.integrations.pydantic_ai import EverrunsAgent, EverrunsRunError
from everruns.policy import PolicyError, check_spec
from everruns.settings import Settings
from everruns.spec import AgentSpec
from everruns.store import Store
from everruns.testing.matrix import acrash_matrix, assert_exactly_once
from everruns.testing.runs import run_to_end
from helpers import TOOLING, FakeOpenAI, Server, cli, env_for, wait_until

pytestmark = pytest.mark.timeout(180)

SPEC = {"name": "trip-planner", "agent": {"python": "pai_agents:trip", "framework": "pydantic_ai"}}


def trip_answer(body: dict[str, Any]) -> dict[str, Any]:
    results = [m["content"] for m in body["messages"] if m["role"] == "tool"]
    if not results:
        return {
            "tool_calls": [{"id": "call_w", "name": "weather", "arguments": {"city": "Lisbon"}}]
        }
    if len(results) == 1:
        call = {"id": "call_b", "name": "book_hotel", "arguments": {"city": "Lisbon", "nights": 2}}
        return {"tool_calls": [call]}
    return {"content": f"Done. Weather: {results[0]} Booking: {results[1]}"}


# A handful of boundaries (each costs two worker processes): all on SQLite; on PostgreSQL
# the two tool crashes, where the effect classes decide (the takeover path is the same).
POINTS = (
    "after:llm.completed#1",  # the first answer journaled, its tool call not started
    "before:tool.completed#1",  # weather (idempotent) ran, its result not journaled
    "before:tool.completed#2",  # book_hotel (at_most_once) charged, result not journaled
    "before:run.completed",  # everything journaled but the end
)


@pytest.fixture
def fake_openai(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAI]:
    server = FakeOpenAI(trip_answer, usage=(100, 10))
    monkeypatch.setenv("PAI_OPENAI_URL", server.url)
    monkeypatch.syspath_prepend(str(TOOLING))
    try:
        yield server
    finally:
        server.close()


async def test_crash_matrix_same_output_and_no_completed_call_repeated(
    db_url: str, tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    """Workers SIGKILLed at a few boundaries: same final output as the uncrashed run, no
    completed model request or tool call executed again, the at_most_once booking never
    twice (an interrupted booking becomes "outcome unknown")."""
    only = list(POINTS if db_url.startswith("sqlite") else POINTS[1:3])
    report = await acrash_matrix(SPEC, "Plan Lisbon", db=db_url, only=only, tmp=tmp_path)
    assert_exactly_once(report)
    assert sorted(c.point for c in report.cases) == sorted(only)
    assert all(c.reached for c in report.cases), report.format()
    reference = report.reference
    assert reference.status == "completed"
    want = "Done. Weather: " + json.dumps(
        {"city": "Lisbon", "forecast": "sunny", "celsius": 24}, separators=(",", ":")
    )
    result = reference.events[-1].data["result"]
    assert result.startswith(want) and result.endswith("Booking: booked 2 nights in Lisbon")
    completed = [e for e in reference.events if e.type == EventType.LLM_COMPLETED]
    assert len(completed) == 3  # a multi-step conversation
    assert all(e.data["usage"]["cost_usd"] > 0 for e in completed)  # openai:gpt-4.1 prices
    assert {
        e.data["name"]: e.data["effect"] for e in reference.events if e.type == "tool.started"
    } == {
        "weather": "idempotent",
        "book_hotel": "at_most_once",
    }
    for case in report.cases:
        charges = [x for x in case.ledger if x["kind"] == "effect" and x["tool"] == "book_hotel"]
        assert len(charges) == 1, (case.point, case.ledger)
        final = case.events[-1]
        assert final.type == EventType.RUN_COMPLETED, (case.point, final)
        if case.point == "before:tool.completed#2":
            assert final.data["result"].endswith("Booking: " + INTERRUPTED_MESSAGE)
        else:
            assert final.data["result"] == result, case.point
    weather = next(x for x in report.cases if x.point == "before:tool.completed#1")
    runs = [x for x in weather.ledger if x["kind"] == "exec" and x["tool"] == "weather"]
    assert [r["attempt"] for r in runs] == [1, 2]  # idempotent: run again, same key
    assert len({r["idempotency_key"] for r in runs}) == 1


# ---------------------------------------------------------------- in-process runs


def _scripted(messages: list[Any], info: AgentInfo) -> ModelResponse:
    done = sum(1 for m in messages for p in m.parts if p.part_kind == "tool-return")
    if done == 0:
        return ModelResponse(parts=[ToolCallPart("weather", {"city": "Oslo"}, tool_call_id="w1")])
    if done == 1:
        call = ToolCallPart("book_hotel", {"city": "Oslo"}, tool_call_id="b1")
        return ModelResponse(parts=[call])
    return ModelResponse(parts=[TextPart(f"planned after {done} tools")])


def _agent(instructions: str = "Plan trips.") -> tuple[Agent[None, str], list[str]]:
    booked: list[str] = []
    agent: Agent[None, str] = Agent(
        FunctionModel(_scripted, model_name="scripted"), instructions=instructions
    )

    @agent.tool_plain
    def weather(city: str) -> str:
        return f"{city}: rain"

    @agent.tool_plain
    def book_hotel(city: str) -> str:
        booked.append(city)
        return f"booked {city}"

    return agent, booked


async def test_in_process_run_then_changed_agent_is_reported_non_deterministic(
    db_url: str,
) -> None:
    agent, booked = _agent()
    durable = EverrunsAgent(agent, name="oslo", effects={"weather": "idempotent"}, db=db_url)
    result = await durable.run("Plan Oslo", run_id="oslo-1")
    assert result.output == "planned after 2 tools" and booked == ["Oslo"]
    again = await durable.run("Plan Oslo", run_id="oslo-1")  # rebuilt from the journal
    assert again.output == result.output and booked == ["Oslo"]

    # A second message: the first turn is replayed, the second runs live.
    async with await Store.open(db_url) as store:
        await store.signal("oslo-1", EventType.MESSAGE_USER, {"content": "And Bergen?"})
        await run_to_end(store, "oslo-1")
        row = await store.get_run("oslo-1")
        types = [e.type for e in await store.load_events("oslo-1")]
    assert row.status == "completed" and row.result == "planned after 2 tools"
    assert types.count(EventType.LLM_COMPLETED) == 4 and types.count("tool.started") == 2
    assert booked == ["Oslo"]

    # The agent's code changes under the run, then a new message resumes it.
    changed, booked2 = _agent("Plan trips, cheaply.")
    EverrunsAgent(changed, name="oslo", db=db_url)  # the same reference, now the new code
    async with await Store.open(db_url) as store:
        await store.signal("oslo-1", EventType.MESSAGE_USER, {"content": "And Trondheim?"})
        await run_to_end(store, "oslo-1")
        row = await store.get_run("oslo-1")
    assert row.status == "failed" and row.error is not None
    assert row.error["reason"] == "non_deterministic_replay"
    assert row.error["message"].startswith("non-deterministic replay at step 1: message 1")
    assert "Plan trips, cheaply." in row.error["message"] and booked2 == []


async def test_a_budget_limit_stops_the_run(db_url: str) -> None:
    agent, booked = _agent()
    durable = EverrunsAgent(agent, name="capped", limits={"max_llm_calls": 2}, db=db_url)
    with pytest.raises(EverrunsRunError) as failure:
        await durable.run("Plan Oslo", run_id="capped-1")
    assert failure.value.status == "failed"
    assert failure.value.error and failure.value.error["reason"] == "budget_exceeded"
    async with await Store.open(db_url) as store:
        events = await store.load_events("capped-1")
    assert [e.type for e in events].count(EventType.LLM_COMPLETED) == 2 and booked == ["Oslo"]


async def test_approval_parks_the_run_durably(db_url: str) -> None:
    agent, booked = _agent()
    durable = EverrunsAgent(agent, name="approve", approvals=["book_hotel"], db=db_url)
    async with await Store.open(db_url) as store:
        run_id = await store.create_run(durable.spec(), "Plan Oslo")
        await run_to_end(store, run_id)
        row = await store.get_run(run_id)
        assert row.status == "waiting" and booked == []
        events = await store.load_events(run_id)
        asked = [e for e in events if e.type == EventType.APPROVAL_REQUESTED]
        assert [e.data["name"] for e in asked] == ["book_hotel"]
        await store.signal(run_id, EventType.APPROVAL_GRANTED, {"call_id": "b1"})
        await run_to_end(store, run_id)
        row = await store.get_run(run_id)
    assert row.status == "completed" and row.result == "planned after 2 tools"
    assert booked == ["Oslo"]


def test_api_specs_need_the_operators_leave_for_the_agent_module() -> None:
    spec = AgentSpec.model_validate(SPEC)
    assert spec.model.label == "python:pydantic_ai"
    with pytest.raises(PolicyError, match=r"agent\.python.*not allowed"):
        check_spec(spec, "api", Settings(), {})
    allowed = Settings.model_validate(
        {"api_specs": {"allow_tools": ["python"], "python_modules": ["other"]}}
    )
    with pytest.raises(PolicyError, match="module 'pai_agents' is not one"):
        check_spec(spec, "api", allowed, {})
    check_spec(spec, "local", Settings(), {})
    with pytest.raises(ValueError, match="brings its own tools"):
        AgentSpec.model_validate({**SPEC, "tools": ["ledgertools:charge"]})


def test_started_through_the_api_and_seen_through_events(
    pg_url: str, tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    """`agent: {python: ..., framework: pydantic_ai}` through the HTTP API (an embedded
    worker imports and runs it), its journal through the API and `everruns events`.
    PostgreSQL only: the framework path is the same on both (the matrix runs on both)."""
    db_url = pg_url
    env = env_for(db_url, PAI_OPENAI_URL=fake_openai.url)
    server = Server(env, "--lease-ttl", "2", log=tmp_path / "server.log")
    try:
        with Client(server.url) as client:
            run = client.runs.start(spec=SPEC, input="Plan Lisbon")
            done = client.runs.wait(run.id, timeout=60)
            assert done.status == "completed", (tmp_path / "server.log").read_text()[-3000:]
            assert done.result and done.result.startswith("Done. Weather:")
            assert done.steps == 3 and done.usage.total_tokens == 330
            types = [e.type for e in client.runs.events(run.id)]
    finally:
        server.stop()
    assert types[:2] == ["run.created", "run.started"] and types[-1] == "run.completed"
    assert types.count("llm.completed") == 3 and types.count("tool.completed") == 2
    shown = cli("events", run.id, "--db", db_url, env=env)
    assert shown.returncode == 0, shown.stderr
    assert "book_hotel" in shown.stdout and "(at_most_once)" in shown.stdout
    assert "weather" in shown.stdout and "(idempotent)" in shown.stdout


async def test_structured_output_retries_and_what_is_refused(db_url: str) -> None:
    """A tool's ModelRetry is journaled and replayed; structured output is the run's JSON
    result; streaming and per-call arguments are refused, never silently non-durable."""
    from pydantic import BaseModel
    from pydantic_ai import ModelRetry

    class Plan(BaseModel):
        city: str
        nights: int

    def model(messages: list[Any], info: AgentInfo) -> ModelResponse:
        kinds = ("tool-return", "retry-prompt")  # a retry answers the call (outcome 'retried')
        retries = sum(1 for m in messages for p in m.parts if p.part_kind in kinds)
        if retries == 0:
            return ModelResponse(parts=[ToolCallPart("nights", {"n": 0}, tool_call_id="n1")])
        final = {"city": "Rome", "nights": 3}
        return ModelResponse(parts=[ToolCallPart(info.output_tools[0].name, final, "o1")])

    agent: Agent[None, Plan] = Agent(FunctionModel(model), output_type=Plan)
    tried: list[int] = []

    @agent.tool_plain
    def nights(n: int) -> int:
        tried.append(n)
        if n < 1:
            raise ModelRetry("at least one night")
        return n

    durable = EverrunsAgent(agent, name="rome", db=db_url)
    result = await durable.run("Plan Rome", run_id="rome-1")
    assert result.output == Plan(city="Rome", nights=3) and tried == [0]
    replayed = await durable.run("Plan Rome", run_id="rome-1")
    assert replayed.output == result.output and tried == [0]
    async with await Store.open(db_url) as store:
        row = await store.get_run("rome-1")
        events = await store.load_events("rome-1")
    assert json.loads(row.result or "") == {"city": "Rome", "nights": 3}
    failed = [e.data for e in events if e.type == EventType.TOOL_FAILED]
    assert failed == [
        {"call_id": "n1", "name": "nights", "error": "at least one night", "retry": True}
    ]
    with pytest.raises(NotImplementedError, match="not durable yet"):
        durable.run_stream("Plan Rome")
    with pytest.raises(TypeError, match="does not support deps"):
        await durable.run("Plan Rome", deps=object())


async def test_cancel_interrupts_the_in_flight_model_request(db_url: str) -> None:
    started = asyncio.Event()

    async def slow(messages: list[Any], info: AgentInfo) -> ModelResponse:
        started.set()
        await asyncio.sleep(60)
        return ModelResponse(parts=[TextPart("too late")])

    agent: Agent[None, str] = Agent(FunctionModel(function=slow))
    durable = EverrunsAgent(agent, name="slow", db=db_url)
    async with await Store.open(db_url) as store:
        run_id = await store.create_run(durable.spec(), "Think long")
        worker = Worker(store, concurrency=1, lease_ttl=2, poll_interval=0.05, only=[run_id])
        task = asyncio.create_task(worker.run())
        try:
            await asyncio.wait_for(started.wait(), 30)
            await store.cancel(run_id)

            async def cancelled() -> bool:
                return (await store.get_run(run_id)).status == "cancelled"

            await wait_until(cancelled, timeout=30, what="the run cancelled")
        finally:
            worker.stop()
            await task
        types = [e.type for e in await store.load_events(run_id)]
    assert types[-2:] == [EventType.LLM_STARTED, EventType.RUN_CANCELLED]


async def test_pause_takes_effect_before_the_next_model_request(db_url: str) -> None:
    """Paused during a tool call: the next model request is not made; resumed, the run
    replays what was journaled and finishes without repeating a call."""
    release = asyncio.Event()
    seen: list[str] = []
    agent: Agent[None, str] = Agent(FunctionModel(_scripted, model_name="scripted"))

    @agent.tool_plain
    async def weather(city: str) -> str:
        seen.append(city)
        await release.wait()
        return f"{city}: rain"

    @agent.tool_plain
    def book_hotel(city: str) -> str:
        return f"booked {city}"

    durable = EverrunsAgent(agent, name="pausing", db=db_url)
    async with await Store.open(db_url) as store:
        run_id = await store.create_run(durable.spec(), "Plan Oslo")
        worker = Worker(store, concurrency=1, lease_ttl=2, poll_interval=0.05, only=[run_id])
        task = asyncio.create_task(worker.run())

        async def in_tool() -> bool:
            return bool(seen)

        async def told() -> bool:
            held = worker.active.get(run_id)
            return held is not None and held[1].pause_requested

        async def status(want: str) -> bool:
            return (await store.get_run(run_id)).status == want

        try:
            await wait_until(in_tool, timeout=30, what="the tool running")
            await store.pause(run_id)
            await wait_until(told, timeout=30, what="the worker told of the pause")
            release.set()
            await wait_until(lambda: status("paused"), timeout=30, what="the run paused")
            await store.resume(run_id)
            await wait_until(lambda: status("completed"), timeout=30, what="the run completed")
        finally:
            worker.stop()
            await task
        types = [e.type for e in await store.load_events(run_id)]
    paused_at = types.index(EventType.RUN_PAUSED)
    assert types[paused_at - 1] == EventType.TOOL_COMPLETED  # no model request in between
    assert types.count(EventType.LLM_COMPLETED) == 3 and seen == ["Oslo"]
