"""Budgets across a run tree, across crashes, for every attempt (issue 11).

- A parent with `max_cost_usd` fans out to 4 children that would each spend more than
  the limit alone: the tree stops within the in-flight bound, every run's charges add
  up to the parent's `tree_usage`, and a worker SIGKILLed during the fan-out loses or
  doubles no charge (each `llm.started` has exactly one charge event).
- Raise and resume after `budget_exceeded`, `max_steps_exceeded`, `deadline_exceeded`.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from everruns.core.budget import Ledger, charge
from everruns.core.events import TERMINAL_STATUSES, Event, EventType
from everruns.engine.worker import Worker
from everruns.settings import Settings
from everruns.spec import parse_spec
from everruns.store import Store
from helpers import cli, env_for, start_worker, stop, wait_until, write_agent

PRICE = {"input_per_mtok": 1000, "output_per_mtok": 1000}  # $0.1 for 50 + 50 tokens
CALL = {"input_tokens": 50, "output_tokens": 50}
CHARGES = (
    EventType.LLM_COMPLETED,
    EventType.LLM_FAILED,
    EventType.LLM_CHARGED,
    EventType.CONTEXT_COMPACTED,
)
ENDS = (EventType.LLM_COMPLETED, EventType.LLM_FAILED, EventType.LLM_CHARGED)


def _child(i: int) -> dict[str, Any]:
    """7 calls of $0.1: more than the parent's whole limit alone."""
    notes = [
        {"tool_calls": [{"name": "note", "arguments": {"text": f"{i}.{k}"}}], "delay": 0.3}
        for k in range(6)
    ]
    return {
        "name": f"child{i}",
        "model": {
            "provider": "scripted",
            "pricing": PRICE,
            "responses": [{**r, "usage": CALL} for r in [*notes, {"text": f"done {i}"}]],
        },
        "tools": [{"builtin": "notes"}],
    }


def _parent(tmp_path: Path, limit: float) -> Path:
    spawns = [
        {"name": "spawn_agent", "arguments": {"input": f"part {i}", "spec": _child(i)}}
        for i in range(4)
    ]
    responses = [
        {"tool_calls": spawns, "usage": CALL},
        {"tool_calls": [{"name": "wait_agents", "arguments": {}}], "usage": CALL},
        {"text": "merged", "usage": CALL},
    ]
    path = write_agent(
        tmp_path / "parent.yaml",
        responses,
        [{"builtin": "subagents"}],
        name="parent",
        limits={"max_cost_usd": limit},
    )
    data = __import__("yaml").safe_load(path.read_text())
    data["model"]["pricing"] = PRICE
    path.write_text(__import__("yaml").safe_dump(data))
    return path


async def _tree(store: Store, run_id: str) -> dict[str, list[Event]]:
    return {r: await store.load_events(r) for r in await store.family([run_id])}


def _journal_ledger(events: list[Event]) -> Ledger:
    total = Ledger()
    for e in events:
        if e.type in CHARGES:
            total = total + charge(e.data.get("usage"))
    return total


def test_fan_out_tree_budget_survives_kills(tmp_path: Path, db_url: str) -> None:
    limit = 0.5
    env = env_for(db_url)
    run_id = cli("start", str(_parent(tmp_path, limit)), "--input", "go", env=env).stdout.strip()
    flags = ("--lease-ttl", "1", "--poll-interval", "0.1")
    worker = start_worker(env, *flags, log=tmp_path / "w1.log")
    kills = 0

    async def scenario() -> dict[str, list[Event]]:
        nonlocal worker, kills
        store = await Store.open(db_url)
        try:

            async def children_calling() -> bool:
                tree = await _tree(store, run_id)
                started = [e for r, evs in tree.items() if r != run_id for e in evs]
                return sum(e.type == EventType.LLM_STARTED for e in started) >= 3

            await wait_until(children_calling, timeout=40, what="children to call their model")
            worker.kill()  # SIGKILL in the middle of the fan-out
            worker.wait(10)
            kills += 1
            worker = start_worker(env, *flags, log=tmp_path / "w2.log")

            async def ended() -> bool:
                # The parent fails as soon as the tree is over its limit; a child still
                # running stops at its own next budget check, so wait for the whole tree.
                rows = [await store.get_run(r) for r in await store.family([run_id])]
                return all(row.status in TERMINAL_STATUSES for row in rows)

            await wait_until(ended, timeout=60, what="the parent and its children to end")
            tree = await _tree(store, run_id)
            parent = await store.get_run(run_id)
            children = [await store.get_run(r) for r in tree if r != run_id]
        finally:
            await store.close()
        assert parent.error and parent.error["reason"] == "budget_exceeded", parent.error
        assert len(children) == 4
        for child in children:  # each stopped by the parent's limit, which it names
            assert child.status == "failed" and child.error, child
            assert child.error["reason"] == "budget_exceeded"
            assert f"tree budget of run {run_id}" in child.error["message"]
        # One ledger: the parent's tree_usage is the sum of every journal of the tree.
        journals = Ledger()
        for events in tree.values():
            journals = journals + _journal_ledger(events)
        assert parent.tree_usage["input_tokens"] == journals.input_tokens
        assert parent.tree_usage["output_tokens"] == journals.output_tokens
        assert parent.tree_usage["cost_usd"] == pytest.approx(journals.cost_usd, abs=1e-6)
        assert parent.tree_usage["cost_known"] is True
        assert parent.usage["cost_usd"] == pytest.approx(_journal_ledger(tree[run_id]).cost_usd)
        return tree

    try:
        tree = asyncio.run(scenario())
    finally:
        stop(worker)
    # Never lost, never doubled: every attempt started has exactly one charge event, also
    # the attempts the SIGKILL interrupted (charged by the worker that took over).
    lost = []
    for events in tree.values():
        started = sum(e.type == EventType.LLM_STARTED for e in events)
        ended = sum(e.type in ENDS for e in events)
        assert started == ended, [e.type for e in events]
        lost += [e for e in events if e.type == EventType.LLM_CHARGED]
    for event in lost:
        assert event.data["reason"] == "lost" and event.data["usage"]["estimated"] is True
    # The overshoot is bounded by one in-flight call per concurrently running run.
    charges = [
        charge(e.data.get("usage")).cost_usd
        for evs in tree.values()
        for e in evs
        if e.type in CHARGES
    ]
    total = sum(charges)
    overshoot = total - limit
    bound = len(tree) * max(charges)
    print(
        f"4-children: limit ${limit}, tree total ${total:.4f}, overshoot ${overshoot:.4f} "
        f"(bound ${bound:.4f}: {len(tree)} runs x largest charge ${max(charges):.4f}), "
        f"kills {kills}, lost attempts charged {len(lost)}"
    )
    assert overshoot <= bound
    assert total < 4 * 0.7  # without the tree limit the children alone spend $2.80


# ------------------------------------------------------------ raise and resume


def _agent(responses: list[dict[str, Any]], **limits: Any) -> Any:
    model = {"provider": "scripted", "pricing": PRICE, "responses": responses}
    return parse_spec(
        {"name": "resumable", "model": model, "tools": [{"builtin": "notes"}], "limits": limits}
    )


NOTES = [
    {"tool_calls": [{"name": "note", "arguments": {"text": f"n{k}"}}], "usage": CALL}
    for k in range(3)
]
CASES = {
    "budget_exceeded": ({"max_cost_usd": 0.15}, {"max_cost_usd": 5.0}, 0.0),
    "max_steps_exceeded": ({"max_steps": 2}, {"max_steps": 10}, 0.0),
    "deadline_exceeded": ({"deadline": 1.0}, {"deadline": 3600.0}, 1.2),
}


async def _run_until_terminal(store: Store, run_id: str) -> str:
    worker = Worker(store, lease_ttl=5, poll_interval=0.05, only=[run_id], settings=Settings())
    task = asyncio.create_task(worker.run())
    try:

        async def ended() -> bool:
            return (await store.get_run(run_id)).status in TERMINAL_STATUSES

        await wait_until(ended, timeout=30, interval=0.05, what=f"{run_id} to end")
    finally:
        worker.stop()
        await task
    return (await store.get_run(run_id)).status


@pytest.mark.parametrize("reason", list(CASES))
async def test_raise_and_resume(store: Store, reason: str) -> None:
    limits, raised, delay = CASES[reason]
    responses = [{**NOTES[0], "delay": delay}, *NOTES[1:], {"text": "all done", "usage": CALL}]
    run_id = await store.create_run(_agent(responses, **limits), "go")
    assert await _run_until_terminal(store, run_id) == "failed"
    failed = await store.get_run(run_id)
    assert failed.error and failed.error["reason"] == reason
    with pytest.raises(Exception, match="still over its limit"):
        await store.resume(run_id)  # not raised yet: refused, with how to raise it
    event = await store.change_limits(run_id, raised, by="test")
    assert event.type == EventType.LIMITS_CHANGED and event.data["by"] == "test"
    assert set(event.data["new"]) == set(raised)
    assert await store.resume(run_id) == "queued"
    assert await _run_until_terminal(store, run_id) == "completed"
    events = await store.load_events(run_id)
    answers = [e.data["message"] for e in events if e.type == EventType.LLM_COMPLETED]
    # Nothing completed is called again: each scripted answer once, in order.
    assert [a.get("content") for a in answers] == [None, None, None, "all done"]
    calls = [e.data["call_id"] for e in events if e.type == EventType.TOOL_COMPLETED]
    assert len(calls) == len(set(calls)) == 3
    row = await store.get_run(run_id)
    assert row.result == "all done" and row.limits == event.data["limits"]
    assert row.usage["cost_usd"] == pytest.approx(0.4)


# ------------------------------------------------------------ servers that report nothing


class _FakeOpenAI:
    """An OpenAI-compatible server (a real HTTP server on a loopback port) that never
    sends usage: the first answer breaks off midway (the connection is closed after two
    deltas), the next is complete."""

    def __init__(self) -> None:
        import http.server
        import threading

        self.requests = 0
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", 0)))
                fake.requests += 1
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.end_headers()
                base = {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "m"}
                words = ["The answer ", "is forty ", "two."]
                if fake.requests == 1:
                    words = words[:2]
                for word in words:
                    delta = {"index": 0, "delta": {"content": word}, "finish_reason": None}
                    self.wfile.write(
                        f"data: {json.dumps({**base, 'choices': [delta]})}\n\n".encode()
                    )
                    self.wfile.flush()
                if fake.requests == 1:
                    self.close_connection = True  # hang up mid-answer
                    return
                end = {"index": 0, "delta": {}, "finish_reason": "stop"}
                self.wfile.write(f"data: {json.dumps({**base, 'choices': [end]})}\n\n".encode())
                self.wfile.write(b"data: [DONE]\n\n")

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


async def test_broken_and_unreported_answers_are_charged_by_estimate(store: Store) -> None:
    server = _FakeOpenAI()
    try:
        spec = parse_spec(
            {
                "name": "local",
                "model": {"provider": "openai-compatible", "name": "m", "base_url": server.url},
                "retry": {"initial_backoff": 0},
            }
        )
        run_id = await store.create_run(spec, "what is the answer?")
        assert await _run_until_terminal(store, run_id) == "completed"
    finally:
        server.close()
    events = await store.load_events(run_id)
    failed = next(e for e in events if e.type == EventType.LLM_FAILED)
    assert failed.data["class"] == "stream_broken"
    broken = failed.data["usage"]
    assert broken["estimated"] is True and broken["input_tokens"] > 0
    assert broken["output_tokens"] == len("The answer is forty ") // 4  # the deltas streamed
    done = next(e for e in events if e.type == EventType.LLM_COMPLETED)
    assert done.data["usage"]["estimated"] is True and done.data["usage"]["output_tokens"] > 0
    row = await store.get_run(run_id)
    assert row.usage["input_tokens"] == broken["input_tokens"] + done.data["usage"]["input_tokens"]
    # No price for this model: the cost is unknown, never $0.
    assert row.usage["cost_known"] is False and row.usage["cost_usd"] is None
    assert row.tree_usage["cost_usd"] is None


async def test_unpriced_sub_agent_is_refused_under_a_cost_limit(store: Store) -> None:
    child = {
        "name": "local-child",
        "model": {
            "provider": "openai-compatible",
            "name": "llama",
            "base_url": "http://127.0.0.1:9/v1",
        },
    }
    spawn = {"name": "spawn_agent", "arguments": {"input": "x", "spec": child}}
    model = {
        "provider": "scripted",
        "pricing": PRICE,
        "responses": [{"tool_calls": [spawn], "usage": CALL}, {"text": "gave up", "usage": CALL}],
    }
    spec = parse_spec(
        {
            "name": "capped",
            "model": model,
            "tools": [{"builtin": "subagents"}],
            "limits": {"max_cost_usd": 5},
        }
    )
    run_id = await store.create_run(spec, "go")
    assert await _run_until_terminal(store, run_id) == "completed"
    events = await store.load_events(run_id)
    (refused,) = [e for e in events if e.type == EventType.TOOL_FAILED]
    assert "has no price" in refused.data["error"] and run_id in refused.data["error"]
    assert await store.family([run_id]) == [run_id]  # no child was created
