"""Pydantic AI agents run durably: journaled, replayed after a crash, budgeted, visible.

The agent (tests/tooling/pai_agents.py) uses Pydantic AI's own OpenAI chat model
against a real loopback HTTP server (helpers.FakeOpenAI, streamed: a worker asks for a
stream to publish live deltas) whose answer depends on the conversation it is sent: look
up the weather (idempotent), book a hotel (at_most_once, it records a charge), find a
table and reserve it through a real stdio MCP server (tests/tooling/pai_mcp.py; the
reservation is at_most_once and counted in the ledger), then answer with the results.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import re
import sqlite3
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from pydantic_ai import Agent, RunContext
from pydantic_ai.messages import ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, FunctionModel

from everruns.client import Client
from everruns.core.events import INTERRUPTED_MESSAGE, EventType
from everruns.engine.worker import Worker
from everruns.errors import SpecError
from everruns.integrations.pydantic_ai import EverrunsAgent, EverrunsRunError
from everruns.policy import PolicyError, check_spec
from everruns.settings import Settings
from everruns.spec import AgentSpec, parse_spec
from everruns.store import Store
from everruns.testing._procs import worker_env
from everruns.testing.matrix import acrash_matrix, assert_exactly_once
from everruns.testing.runs import run_to_end
from helpers import TOOLING, FakeOpenAI, Server, cli, env_for, read_ledger, wait_until

pytestmark = pytest.mark.timeout(180)

SPEC = {
    "name": "trip-planner",
    "agent": {
        "python": "pai_agents:trip",
        "framework": "pydantic_ai",
        "effects": {"find_table": "idempotent"},  # an MCP tool's effect class, by name
    },
}
WEATHER = json.dumps({"city": "Lisbon", "forecast": "sunny", "celsius": 24}, separators=(",", ":"))
TABLE = "Tasca do Chico, Lisbon"


def trip_answer(body: dict[str, Any]) -> dict[str, Any]:
    results = [m["content"] for m in body["messages"] if m["role"] == "tool"]
    calls = [
        ("call_w", "weather", {"city": "Lisbon"}),
        ("call_b", "book_hotel", {"city": "Lisbon", "nights": 2}),
        ("call_f", "find_table", {"city": "Lisbon"}),
        ("call_r", "reserve_table", {"restaurant": TABLE, "people": 2}),
    ]
    if len(results) < len(calls):
        call_id, name, arguments = calls[len(results)]
        return {"tool_calls": [{"id": call_id, "name": name, "arguments": arguments}]}
    return {"content": f"Done. Weather: {results[0]} Booking: {results[1]} Table: {results[3]}"}


# A handful of boundaries (each costs two worker processes, ~3 s of imports and an MCP
# server each), every effect class of a Python tool and of an MCP tool crashed once, split
# over the two databases (the takeover path is the same on both), and the full replay.
# Left out as equivalent: `after:llm.completed#1` (the replay-then-live path of
# `before:tool.completed#1`), `after:tool.started#N` (an at_most_once call started and never
# finished: what `before:tool.completed#N` checks, minus the call having happened) and
# `after:tool.completed#N` (served from the journal, as every call is in
# `before:run.completed`).
SQLITE_POINTS = (
    "before:tool.completed#1",  # weather (Python, idempotent) ran, its result not journaled
    "before:tool.completed#4",  # reserve_table (MCP, at_most_once) reserved, not journaled
    "before:run.completed",  # everything journaled but the end: a full replay
)
POSTGRES_POINTS = (
    "before:tool.completed#2",  # book_hotel (Python, at_most_once) charged, not journaled
    "before:tool.completed#3",  # find_table (MCP, idempotent) answered, not journaled
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
    completed model request or tool call executed again, at_most_once calls (a Python
    tool, an MCP tool) never twice (an interrupted one becomes "outcome unknown"), the
    idempotent ones (a Python tool, an MCP tool) run again with the same key."""
    only = list(SQLITE_POINTS if db_url.startswith("sqlite") else POSTGRES_POINTS)
    report = await acrash_matrix(SPEC, "Plan Lisbon", db=db_url, only=only, tmp=tmp_path)
    assert_exactly_once(report)
    assert sorted(c.point for c in report.cases) == sorted(only)
    assert all(c.reached for c in report.cases), report.format()
    reference = report.reference
    assert reference.status == "completed"
    result = reference.events[-1].data["result"]
    assert result == (
        f"Done. Weather: {WEATHER} Booking: booked 2 nights in Lisbon "
        f"Table: table for 2 reserved at {TABLE}"
    )
    completed = [e for e in reference.events if e.type == EventType.LLM_COMPLETED]
    assert len(completed) == 5  # a multi-step conversation
    # Every live request was streamed, and its usage and cost journaled once.
    assert fake_openai.requests and all(r.get("stream") for r in fake_openai.requests)
    assert all(e.data["usage"]["input_tokens"] == 100 for e in completed)
    assert all(e.data["usage"]["cost_usd"] > 0 for e in completed)  # openai:gpt-4.1 prices
    assert {
        e.data["name"]: e.data["effect"] for e in reference.events if e.type == "tool.started"
    } == {
        "weather": "idempotent",
        "book_hotel": "at_most_once",
        "find_table": "idempotent",
        "reserve_table": "at_most_once",
    }
    for case in report.cases:
        charges = [x for x in case.ledger if x["kind"] == "effect" and x["tool"] == "book_hotel"]
        reserved = [x for x in case.ledger if x["kind"] == "mcp"]
        assert len(charges) == 1 and len(reserved) == 1, (case.point, case.ledger)
        final = case.events[-1]
        assert final.type == EventType.RUN_COMPLETED, (case.point, final)
        interrupted = [e.data["name"] for e in case.events if e.data.get("interrupted")]
        if case.point == "before:tool.completed#2":
            assert interrupted == ["book_hotel"]
            assert f"Booking: {INTERRUPTED_MESSAGE} Table:" in final.data["result"]
        elif case.point == "before:tool.completed#4":
            assert interrupted == ["reserve_table"]
            assert final.data["result"].endswith(f"Table: {INTERRUPTED_MESSAGE}")
        else:
            assert interrupted == [] and final.data["result"] == result, case.point
    for point, tool in (("#1", "weather"), ("#3", "find_table")):
        case = next((x for x in report.cases if x.point.endswith(point)), None)
        if case is None:
            continue
        runs = [x for x in case.ledger if x["kind"] == "exec" and x["tool"] == tool]
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
    # Static deps: JSON only, a problem named by field; unset, they stay out of the
    # stored spec (existing versions keep their hash).
    assert "deps" not in spec.to_dict()["agent"]
    given = {"currency": "EUR", "rates": [1.5, None]}
    assert parse_spec({**SPEC, "agent": {**SPEC["agent"], "deps": given}}).agent.deps == given
    dated = {**SPEC, "agent": {**SPEC["agent"], "deps": {"when": datetime.date(2026, 12, 7)}}}
    with pytest.raises(SpecError, match=r"agent\.deps: when is of type date, not a JSON value"):
        parse_spec(dated)


def test_started_through_the_api_streamed_live_and_seen_through_events(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`agent: {python: ..., framework: pydantic_ai}` through the HTTP API (an embedded
    worker imports and runs it): the answer's tokens reach the API's live feed as
    `llm.delta` before the `llm.completed` that journals it whole; its journal through the
    API and `everruns events` (MCP calls with their effect classes). PostgreSQL only: the
    framework path is the same on both (the matrix runs on both)."""
    gate = threading.Event()  # the answer streams once this test is subscribed
    fake = FakeOpenAI(trip_answer, usage=(100, 10), gates=(gate,))
    env = env_for(pg_url, PAI_OPENAI_URL=fake.url)
    server = Server(env, "--lease-ttl", "2", log=tmp_path / "server.log")
    try:
        with Client(server.url) as client:
            run = client.runs.start(spec=SPEC, input="Plan Lisbon")
            seen: list[tuple[str, Any]] = []
            for event in client.runs.stream(run.id):
                seen.append((event.type, event.data))
                gate.set()  # subscribed: the first event came through the feed
            done = client.runs.wait(run.id, timeout=10)
            assert done.status == "completed", (tmp_path / "server.log").read_text()[-3000:]
            assert done.steps == 5 and done.usage.total_tokens == 550
            types = [e.type for e in client.runs.events(run.id)]
    finally:
        server.stop()
        fake.close()
    deltas = [i for i, (kind, _) in enumerate(seen) if kind == "llm.delta"]
    answer = [i for i, (kind, _) in enumerate(seen) if kind == "llm.completed"][-1]
    text = "".join(seen[i][1]["text"] for i in deltas)
    assert len(deltas) > 5 and max(deltas) < answer  # word by word, before the journal
    assert text == seen[answer][1]["message"]["content"] == done.result
    assert types[:2] == ["run.created", "run.started"] and types[-1] == "run.completed"
    assert types.count("llm.completed") == 5 and types.count("tool.completed") == 4
    shown = cli("events", run.id, "--db", pg_url, env=env)
    assert shown.returncode == 0, shown.stderr
    for name, effect in (
        ("weather", "idempotent"),
        ("book_hotel", "at_most_once"),
        ("find_table", "idempotent"),
        ("reserve_table", "at_most_once"),
    ):
        assert re.search(rf"{name} \[call_\w\] attempt 1 \({effect}\)", shown.stdout), name


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
    with pytest.raises(NotImplementedError, match=r"cannot be durable.*run_stream_events"):
        durable.run_stream("Plan Rome")
    with pytest.raises(TypeError, match="does not support message_history"):
        await durable.run("Plan Rome", message_history=[])


def booker_answer(body: dict[str, Any]) -> dict[str, Any]:
    results = [m["content"] for m in body["messages"] if m["role"] == "tool"]
    if not results:
        return {
            "tool_calls": [
                {"id": "call_lis", "name": "book", "arguments": {"city": "Lisbon", "nights": 2}},
                {"id": "call_opo", "name": "book", "arguments": {"city": "Porto", "nights": 1}},
            ]
        }
    return {"content": "Results: " + " | ".join(results)}


async def test_requires_approval_parks_durably_across_a_worker_restart(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pydantic AI's own `requires_approval=True` tool, two calls in one answer: both asked
    for at once, the run parks (run.waiting, nothing executed, no worker held: the worker
    is killed); `everruns approve` and `everruns deny` decide; a new worker process replays
    the first answer, runs the approved call once, tells the model the denial."""
    fake = FakeOpenAI(booker_answer, usage=(50, 5))
    monkeypatch.setenv("PAI_OPENAI_URL", fake.url)
    monkeypatch.syspath_prepend(str(TOOLING))
    spec = AgentSpec.model_validate(
        {
            "name": "hotel-booker",
            "agent": {"python": "pai_booker:booker", "framework": "pydantic_ai"},
        }
    )
    ledger, log = tmp_path / "ledger.jsonl", tmp_path / "worker.log"
    try:
        async with await Store.open(db_url) as store:
            run_id = await store.create_run(spec, "Book Lisbon and Porto")
            first = await _testing_worker(db_url, run_id, ledger, log)

            async def parked() -> bool:
                return (await store.get_run(run_id)).status == "waiting"

            await wait_until(parked, timeout=60, what="the run parked")
            first.kill()  # the parked run needs no worker: this one is gone for good
            await first.wait()
            events = await store.load_events(run_id)
            asked = [e.data["call_id"] for e in events if e.type == EventType.APPROVAL_REQUESTED]
            assert asked == ["call_lis", "call_opo"] and events[-1].type == EventType.RUN_WAITING
            assert not [e for e in events if e.type == EventType.TOOL_STARTED]
            env = env_for(db_url)
            approved, denied = await asyncio.gather(
                asyncio.to_thread(cli, "approve", run_id, "call_lis", env=env),
                asyncio.to_thread(cli, "deny", run_id, "call_opo", "--reason", "too far", env=env),
            )
            assert approved.returncode == 0 and denied.returncode == 0, denied.stderr
            second = await _testing_worker(db_url, run_id, ledger, log)
            assert await asyncio.wait_for(second.wait(), 60) == 0, log.read_text()[-3000:]
            row = await store.get_run(run_id)
            events = await store.load_events(run_id)
    finally:
        fake.close()
    assert row.status == "completed", row.error
    assert row.result == "Results: booked 2 nights in Lisbon | denied by a human: too far"
    started = [e.data["call_id"] for e in events if e.type == EventType.TOOL_STARTED]
    failed = [e.data for e in events if e.type == EventType.TOOL_FAILED]
    assert started == ["call_lis"] and [f["call_id"] for f in failed] == ["call_opo"]
    assert failed[0]["denied"] is True
    steps = [e.data["step"] for e in events if e.type == EventType.LLM_STARTED]
    assert steps == [1, 2]  # the first answer was replayed, not asked again
    assert len(fake.requests) == 2
    runs = [x["call_id"] for x in read_ledger(ledger) if x["kind"] == "exec"]
    charges = [x["call_id"] for x in read_ledger(ledger) if x["kind"] == "effect"]
    assert runs == charges == ["call_lis"]


async def _testing_worker(
    db_url: str, run_id: str, ledger: Path, log: Path
) -> asyncio.subprocess.Process:
    """A real worker process for one run (everruns.testing.worker: it counts each tool
    execution in `ledger` and exits once the run is terminal)."""
    out = await asyncio.to_thread(open, log, "ab")
    with out:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "everruns.testing.worker",
            db_url,
            run_id,
            "--lease-ttl",
            "1",
            "--poll-interval",
            "0.1",
            env=worker_env(ledger),
            stdout=out,
            stderr=out,
        )


def _streamed(steps: list[list[str]]) -> Any:
    """A streaming FunctionModel answer: two `book` calls needing approval, then the text."""

    async def stream(messages: list[Any], info: AgentInfo) -> Any:
        results = [p.content for m in messages for p in m.parts if p.part_kind == "tool-return"]
        prompt = next(p.content for p in messages[0].parts if p.part_kind == "user-prompt")
        if prompt == "Say hi":
            for word in ("Hi", " there"):
                yield word
            return
        if not results:
            yield "Let me book."
            yield {
                0: DeltaToolCall("book", '{"city": "Oslo"}', tool_call_id="b1"),
                1: DeltaToolCall("book", '{"city": "Bergen"}', tool_call_id="b2"),
            }
            return
        text = f"Booked: {results[0]}; {results[1]}."
        steps.append(text.split(" "))
        for i, word in enumerate(text.split(" ")):
            yield word if i == 0 else " " + word

    return stream


async def test_streaming_events_deltas_and_pydantic_ai_approval_in_process(db_url: str) -> None:
    """`run_stream_events` yields Pydantic AI's own events of the durable execution; the
    `requires_approval` tool parks it (the stream ends with the run waiting). Approved and
    denied, the resumed execution hands its events to the in-process listener (the
    replayed first answer too) but streams to everruns' live stream only the live answer,
    word by word, journaled whole once. `run(event_stream_handler=...)` gets live events."""
    from pydantic_ai.messages import (
        FinalResultEvent,
        FunctionToolCallEvent,
        FunctionToolResultEvent,
        PartDeltaEvent,
        PartStartEvent,
        TextPartDelta,
    )
    from pydantic_ai.run import AgentRunResultEvent

    from everruns.engine import framework
    from everruns.engine.broker import Broker
    from everruns.integrations.pydantic_ai import NodeEvents

    words: list[list[str]] = []
    booked: list[str] = []
    agent: Agent[None, str] = Agent(FunctionModel(stream_function=_streamed(words)))

    @agent.tool_plain(requires_approval=True)
    def book(city: str) -> str:
        booked.append(city)
        return f"booked {city}"

    durable = EverrunsAgent(agent, name="streamer", db=db_url)
    first: list[Any] = []
    with pytest.raises(EverrunsRunError) as parked:
        async with durable.run_stream_events("Book Oslo and Bergen", run_id="stream-1") as events:
            async for event in events:
                first.append(event)
    assert parked.value.status == "waiting" and booked == []
    calls = [e.part.tool_call_id for e in first if isinstance(e, FunctionToolCallEvent)]
    assert calls == ["b1", "b2"] and first[0] == PartStartEvent(
        index=0, part=TextPart("Let me book.")
    )

    async with await Store.open(db_url) as store:
        await store.signal("stream-1", EventType.APPROVAL_GRANTED, {"call_id": "b1"})
        await store.signal(
            "stream-1", EventType.APPROVAL_DENIED, {"call_id": "b2", "reason": "too wet"}
        )
        broker = Broker()
        live = broker.subscribe("stream-1")
        seen: list[Any] = []

        async def listener(item: Any) -> None:
            assert isinstance(item, NodeEvents)
            async for event in item.events:
                seen.append(event)

        framework.listen("stream-1", listener)
        worker = Worker(store, concurrency=1, lease_ttl=2, poll_interval=0.05, only=["stream-1"])
        worker.broker = broker
        task = asyncio.create_task(worker.run())
        try:

            async def done() -> bool:
                return (await store.get_run("stream-1")).status == "completed"

            await wait_until(done, timeout=30, what="the resumed run completed")
        finally:
            worker.stop()
            await task
            framework.listen("stream-1", None)
        events_ = await store.load_events("stream-1")
    text = "Booked: booked Oslo; denied by a human: too wet."
    assert booked == ["Oslo"] and words == [text.split(" ")]
    published = [live.get_nowait() for _ in range(live.qsize())]
    deltas = [e for e in published if e["type"] == "llm.delta"]
    assert "".join(d["data"]["text"] for d in deltas) == text and len(deltas) == len(words[0])
    # ... after this execution's first model request: the replayed one was not streamed.
    second = next(i for i, e in enumerate(published) if e["type"] == "llm.started")
    assert published[second]["data"]["step"] == 2 and published.index(deltas[0]) > second
    answers = [e.data["message"]["content"] for e in events_ if e.type == EventType.LLM_COMPLETED]
    assert answers == ["Let me book.", text]
    # The listener saw the replayed first answer and tool results, then the live answer.
    results = [e.part.content for e in seen if isinstance(e, FunctionToolResultEvent)]
    assert sorted(results) == ["booked Oslo", "denied by a human: too wet"]
    assert any(isinstance(e, FinalResultEvent) for e in seen)
    streamed = "".join(
        e.part.content if isinstance(e, PartStartEvent) else e.delta.content_delta
        for e in seen
        if (isinstance(e, PartStartEvent) and isinstance(e.part, TextPart))
        or (isinstance(e, PartDeltaEvent) and isinstance(e.delta, TextPartDelta))
    )
    assert streamed == "Let me book." + text

    got: list[Any] = []

    async def handler(ctx: Any, stream: Any) -> None:
        async for event in stream:
            got.append(event)

    hi = await durable.run("Say hi", run_id="stream-2", event_stream_handler=handler)
    assert hi.output == "Hi there"
    assert [type(e).__name__ for e in got] == [
        "PartStartEvent",
        "FinalResultEvent",
        "PartDeltaEvent",
        "PartEndEvent",
    ]
    assert not isinstance(got[-1], AgentRunResultEvent)


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


# ---------------------------------------------------------------- deps


@dataclass
class Trip:
    city: str
    nights: Any


class Till:
    """Deps that cannot be JSON: a database connection, the run's id."""

    def __init__(self, run_id: str, currency: str):
        self.run_id, self.currency = run_id, currency
        self.db = sqlite3.connect(":memory:", check_same_thread=False)


def _deps_model(messages: list[Any], info: AgentInfo) -> ModelResponse:
    """Book once, then answer with the booking and the instructions the agent was given."""
    results = [p.content for m in messages for p in m.parts if p.part_kind == "tool-return"]
    if not results:
        return ModelResponse(parts=[ToolCallPart("book", {"amount": 90}, tool_call_id="k1")])
    return ModelResponse(parts=[TextPart(f"{results[0]} ({info.instructions})")])


async def test_deps_travel_with_the_run_as_json_and_come_back_as_deps_type(db_url: str) -> None:
    """`run(deps=Trip(...))`: journaled as JSON in run.created; the execution gets them
    validated back as the agent's deps_type (a Trip in the tool and the instructions). The
    same run again: from the journal (same or no deps); with other deps: refused. Deps
    that are not JSON, or that would not come back equal (a SecretStr is journaled masked;
    a dataclass for an agent without deps_type would come back a dict): refused, saying
    why. Plain JSON deps of an agent without deps_type are given back as they are."""
    seen: list[Any] = []
    agent: Agent[Trip, str] = Agent(FunctionModel(_deps_model), deps_type=Trip)

    @agent.instructions
    def plan(ctx: RunContext[Trip]) -> str:
        return f"Plan {ctx.deps.city}"

    @agent.tool
    def book(ctx: RunContext[Trip], amount: int) -> str:
        seen.append(ctx.deps)
        return f"booked {ctx.deps.nights} nights in {ctx.deps.city} for {amount}"

    durable = EverrunsAgent(agent, name="deps", db=db_url)
    result = await durable.run("Book", deps=Trip("Oslo", 2), run_id="deps-1")
    assert result.output == "booked 2 nights in Oslo for 90 (Plan Oslo)"
    assert seen == [Trip("Oslo", 2)] and type(seen[0]) is Trip
    events = await _events_of(db_url, "deps-1")
    assert events[0].data["deps"] == {"city": "Oslo", "nights": 2}
    again = await durable.run("Book", deps=Trip("Oslo", 2), run_id="deps-1")
    same = await durable.run("Book", run_id="deps-1")  # none given: the journaled ones
    assert again.output == same.output == result.output and len(seen) == 1
    with pytest.raises(ValueError, match=r"run deps-1 was created with deps .*Oslo.*Bergen"):
        await durable.run("Book", deps=Trip("Bergen", 2), run_id="deps-1")
    async with durable.run_stream_events("Book", deps=Trip("Oslo", 2), run_id="deps-1") as events:
        streamed = [e async for e in events]
    assert streamed[-1].result.output == result.output and len(seen) == 1
    with pytest.raises(
        TypeError, match=r"deps: a Trip cannot be journaled as JSON.*deps_factory=fn"
    ):
        await durable.run("Book", deps=Trip("Oslo", threading.Lock()))
    with pytest.raises(TypeError, match=r"a Trip does not survive the journal.*SecretStr"):
        await durable.run("Book", deps=Trip("Oslo", SecretStr("2")))  # journaled masked
    with pytest.raises(TypeError, match=r"a Trip cannot be journaled as JSON \(.*lock"):
        durable.run_stream_events("Book", deps=Trip("Oslo", threading.Lock()))
    assert len(seen) == 1

    untyped: Agent[Any, str] = Agent(FunctionModel(_deps_model))  # no deps_type

    @untyped.tool(name="book")
    def book_(ctx: RunContext[Any], amount: int) -> str:
        seen.append(ctx.deps)
        return f"booked in {ctx.deps['city']}"

    durable = EverrunsAgent(untyped, name="untyped", db=db_url)
    with pytest.raises(TypeError, match=r"a Trip does not survive.*declares no type.*deps_type="):
        await durable.run("Book", deps=Trip("Rome", 1))  # it would come back as a dict
    result = await durable.run("Book", deps={"city": "Rome"})  # JSON: given back as it is
    assert result.output.startswith("booked in Rome") and seen[-1] == {"city": "Rome"}


async def test_a_deps_factory_builds_the_live_object_in_each_execution(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`deps_factory=fn(run_id, value)` (async here) builds deps that cannot be JSON (a
    database connection) in the executing worker from the journaled JSON value, in each
    execution (the first and the replay). A by-reference spec's static `agent.deps` is the
    value of a run that has none. Non-JSON deps, and a ref whose agent lacks the factory,
    are refused."""
    built: list[tuple[str, Any]] = []

    async def open_till(run_id: str, value: Any) -> Till:
        built.append((run_id, value))
        return Till(run_id, value["currency"])

    agent: Agent[Till, str] = Agent(FunctionModel(_deps_model), deps_type=Till)

    @agent.tool
    def book(ctx: RunContext[Till], amount: int) -> str:
        total = ctx.deps.db.execute("select ? * 2", (amount,)).fetchone()[0]
        return f"charged {total} {ctx.deps.currency} in {ctx.deps.run_id}"

    durable = EverrunsAgent(agent, name="till", deps_factory=open_till, db=db_url)
    result = await durable.run("Book", deps={"currency": "EUR"}, run_id="till-1")
    assert result.output == "charged 180 EUR in till-1 (None)"
    assert built == [("till-1", {"currency": "EUR"})]
    await durable.run("Book", run_id="till-1")  # replayed: the factory builds it again
    assert built == [("till-1", {"currency": "EUR"})] * 2

    spec = durable.spec().to_dict()
    spec["agent"]["deps"] = {"currency": "NOK"}
    async with await Store.open(db_url) as store:
        run_id = await store.create_run(AgentSpec.model_validate(spec), "Book")
        await run_to_end(store, run_id)
        row = await store.get_run(run_id)
    assert row.status == "completed" and row.result == f"charged 180 NOK in {run_id} (None)"
    assert built[-1] == (run_id, {"currency": "NOK"})

    with pytest.raises(TypeError, match=r"a Till cannot be journaled.*factory's input"):
        await durable.run("Book", deps=Till("x", "EUR"))
    monkeypatch.syspath_prepend(str(TOOLING))
    elsewhere = EverrunsAgent(agent, ref="pai_agents:trip", deps_factory=open_till, db=db_url)
    with pytest.raises(TypeError, match=r"deps_factory: ref 'pai_agents:trip' names an agent"):
        await elsewhere.run("Book", deps={"currency": "EUR"})
    assert len(built) == 3


async def _events_of(db_url: str, run_id: str) -> list[Any]:
    async with await Store.open(db_url) as store:
        return await store.load_events(run_id)


def host_answer(body: dict[str, Any]) -> dict[str, Any]:
    results = [m["content"] for m in body["messages"] if m["role"] == "tool"]
    if not results:
        return {"tool_calls": [{"id": "call_w", "name": "welcome", "arguments": {}}]}
    system = next(m["content"] for m in body["messages"] if m["role"] == "system")
    return {"content": f"{results[0]} | {system}"}


async def test_a_taking_over_worker_process_rebuilds_the_deps_from_the_journal(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A by-reference run (tests/tooling/pai_agents.py: host, deps_type=Guest) with deps in
    run.created, as `run(deps=...)` journals them: the first worker process is SIGKILLed
    after the idempotent tool ran (its result not journaled); the next worker process
    rebuilds the deps from the journal (the instructions made from them match the
    journaled request, so the first answer is replayed) and its tool sees the same Guest.
    PostgreSQL only, to save two worker processes: the deps are read from the journal by
    the same code on both databases (the in-process deps tests run on both; the OpenAI
    Agents SDK's crash case runs on SQLite)."""
    from everruns.testing._procs import KILLED, run_worker

    db_url = pg_url
    fake = FakeOpenAI(host_answer, usage=(20, 5))
    monkeypatch.setenv("PAI_OPENAI_URL", fake.url)
    monkeypatch.syspath_prepend(str(TOOLING))
    spec = AgentSpec.model_validate(
        {"name": "host", "agent": {"python": "pai_agents:host", "framework": "pydantic_ai"}}
    )
    ledger = tmp_path / "ledger.jsonl"
    guest = {"name": "Ada", "nights": 3}
    try:
        async with await Store.open(db_url) as store:
            run_id = await store.create_run(spec, "Welcome", created_data={"deps": guest})
            for n, point in enumerate(["before:tool.completed#1", None]):
                log = tmp_path / f"worker-{n}.log"
                code = await run_worker(db_url, run_id, worker_env(ledger, point), log, 0.5, 60)
                assert code == (KILLED if point else 0), log.read_text()[-3000:]
            row = await store.get_run(run_id)
            events = await store.load_events(run_id)
    finally:
        fake.close()
    assert row.status == "completed", row.error
    assert row.result == "welcome Ada, 3 nights | You welcome Ada."
    seen = [x for x in read_ledger(ledger) if x["kind"] == "deps"]
    assert [(x["type"], x["deps"]) for x in seen] == [("Guest", guest)] * 2
    assert len({x["pid"] for x in seen}) == 2  # two worker processes, each rebuilt them
    assert [e.data["takeover"] for e in events if e.type == "run.started"] == [False, True]
    assert [e.data["step"] for e in events if e.type == EventType.LLM_STARTED] == [1, 2]
    assert len(fake.requests) == 2  # the first answer was replayed, not asked again
