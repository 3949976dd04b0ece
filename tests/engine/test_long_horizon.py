"""Compaction and sub-agents, end to end with real worker processes and SIGKILL."""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path
from typing import Any

import pytest

from everruns.core.context import SUMMARY_HEADER, compaction_cut, estimate_tokens, model_view
from everruns.core.events import TERMINAL_STATUSES, Event, EventType
from everruns.core.state import State, fold
from everruns.spec import parse_spec
from everruns.store import Store
from helpers import cli, env_for, start_worker, stop, wait_until, write_agent

LONG = "many words " * 30


def _compacting_responses(n: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(n):
        out.append(
            {
                "tool_calls": [
                    {"name": "note", "arguments": {"text": f"fact {i}: {LONG}"}},
                    {"name": "read_notes", "arguments": {}},
                ]
            }
        )
    out.append({"text": "finished"})
    return out


def _check_view(state: State) -> None:
    """Every tool result the model sees follows the assistant message that called it."""
    view = model_view(state)
    called: set[str] = set()
    for message in view:
        if message["role"] == "assistant":
            called |= {c["id"] for c in message.get("tool_calls") or []}
        if message["role"] == "tool":
            assert message["tool_call_id"] in called, "a tool result was split from its call"


async def _run_to_end(db_url: str, run_id: str, timeout: float = 60) -> State:
    store = await Store.open(db_url)
    try:

        async def done() -> bool:
            return (await store.get_run(run_id)).status in TERMINAL_STATUSES

        await wait_until(done, timeout=timeout, what=f"run {run_id} to end")
        return fold(await store.load_events(run_id))
    finally:
        await store.close()


async def _events(db_url: str, run_id: str) -> list[Event]:
    store = await Store.open(db_url)
    try:
        return await store.load_events(run_id)
    finally:
        await store.close()


def test_compaction_keeps_pairs_notes_and_completes(tmp_path: Path, db_url: str) -> None:
    spec = write_agent(
        tmp_path / "a.yaml",
        _compacting_responses(6),
        [{"builtin": "notes"}],
        context={"max_tokens": 400, "keep_recent": 3},
    )
    env = env_for(db_url)
    result = cli("run", str(spec), "--input", "research " + LONG, "--json", env=env)
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    compactions = [e for e in events if e["type"] == "context.compacted"]
    assert compactions, "the conversation outgrew max_tokens but was never compacted"
    state = asyncio.run(_run_to_end(db_url, events[0]["run_id"]))
    assert state.status == "completed"
    assert state.summary is not None and state.compacted_until > 0
    _check_view(state)
    view = model_view(state)
    assert view[0]["content"].startswith(SUMMARY_HEADER)
    # Notes survive compaction verbatim, and the full history stays in the journal.
    assert all(note in view[0]["content"] for note in state.notes[:1])
    assert len(state.messages) > len(view)
    assert estimate_tokens("", view) < estimate_tokens("", state.messages)


def test_crash_during_compaction_repeats_it(tmp_path: Path, sqlite_url: str) -> None:
    spec = write_agent(
        tmp_path / "a.yaml",
        _compacting_responses(5),
        [{"builtin": "notes"}],
        context={"max_tokens": 400, "keep_recent": 3},
    )
    env = env_for(sqlite_url)
    run_id = cli("start", str(spec), "--input", "go " + LONG, env=env).stdout.strip()
    crashing = start_worker(
        {**env, "EVERRUNS_CRASH_AT": "compaction.mid"}, "--lease-ttl", "1", "--poll-interval", "0.1"
    )
    assert crashing.wait(60) == -9
    events = asyncio.run(_events(sqlite_url, run_id))
    assert events[-1].type == EventType.COMPACTION_STARTED  # died half-way through the compaction
    worker = start_worker(env, "--lease-ttl", "1", "--poll-interval", "0.1")
    try:
        state = asyncio.run(_run_to_end(sqlite_url, run_id))
    finally:
        stop(worker)
    assert state.status == "completed"
    events = asyncio.run(_events(sqlite_url, run_id))
    starts = [e.data["until"] for e in events if e.type == EventType.COMPACTION_STARTED]
    dones = [e.data["until"] for e in events if e.type == EventType.CONTEXT_COMPACTED]
    assert starts[0] == starts[1], "the interrupted compaction was repeated"
    assert len(dones) == len(set(dones)), "a completed compaction was repeated"
    _check_view(state)


def test_provider_context_too_long_compacts_then_retries_once(
    tmp_path: Path, sqlite_url: str
) -> None:
    responses = _compacting_responses(3)
    responses[3] = {
        "text": "finished",
        "error": "prompt is too long",
        "error_class": "context_too_long",
        "error_times": 1,
    }
    spec = write_agent(tmp_path / "a.yaml", responses, [{"builtin": "notes"}])
    result = cli("run", str(spec), "--input", "go", "--json", env=env_for(sqlite_url))
    assert result.returncode == 0, result.stderr
    types = [json.loads(line)["type"] for line in result.stdout.splitlines()]
    failed_at = types.index("llm.failed")
    assert types[failed_at + 1 : failed_at + 3] == ["compaction.started", "context.compacted"]
    assert types[-1] == "run.completed"

    always = _compacting_responses(3)
    always[3] = {"text": "x", "error": "prompt is too long", "error_class": "context_too_long"}
    spec = write_agent(tmp_path / "b.yaml", always, [{"builtin": "notes"}])
    result = cli("run", str(spec), "--input", "go", "--json", env=env_for(sqlite_url))
    assert result.returncode == 1
    last = json.loads(result.stdout.splitlines()[-1])
    assert last["type"] == "run.failed" and last["data"]["reason"] == "context_too_long"
    assert result.stdout.count('"context.compacted"') == 1  # compacted and retried once only


def _child(text: str, delay: float) -> dict[str, Any]:
    return {
        "name": "child",
        "model": {"provider": "scripted", "responses": [{"text": text, "delay": delay}]},
    }


def _parent(tmp_path: Path, delays: tuple[float, ...], **fields: Any) -> Path:
    spawns = [
        {
            "name": "spawn_agent",
            "arguments": {"input": f"part {i}", "spec": _child(f"result {i}", d)},
        }
        for i, d in enumerate(delays)
    ]
    return write_agent(
        tmp_path / "parent.yaml",
        [
            {"tool_calls": spawns},
            {"tool_calls": [{"name": "wait_agents", "arguments": {}}]},
            {"text": "merged"},
        ],
        [{"builtin": "subagents"}],
        name="parent",
        **fields,
    )


def test_fan_out_survives_random_kills(tmp_path: Path, db_url: str) -> None:
    seed = random.randrange(1_000_000)
    rng = random.Random(seed)
    print(f"seed {seed}")
    spec = _parent(tmp_path, (0.6, 0.9, 1.2))
    env = env_for(db_url)
    run_id = cli("start", str(spec), "--input", "split the work", env=env).stdout.strip()
    deadline = time.monotonic() + 90
    worker = start_worker(env, "--lease-ttl", "1", "--poll-interval", "0.1")
    kills = 0
    try:
        while time.monotonic() < deadline and kills < 4:
            time.sleep(rng.uniform(0.3, 1.2))
            worker.kill()
            worker.wait(10)
            kills += 1
            worker = start_worker(env, "--lease-ttl", "1", "--poll-interval", "0.1")
        state = asyncio.run(_run_to_end(db_url, run_id, timeout=90))
    finally:
        stop(worker)
    assert state.status == "completed", state.error
    assert len(state.children) == 3
    waited = [m for m in state.messages if m["role"] == "tool" and m["name"] == "wait_agents"]
    assert len(waited) == 1
    results = json.loads(waited[0]["content"])
    assert sorted(r["result"] for r in results) == ["result 0", "result 1", "result 2"]
    for child in state.children:
        events = asyncio.run(_events(db_url, child))
        assert [e.type for e in events].count("run.completed") == 1
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
    parent_events = asyncio.run(_events(db_url, run_id))
    finished = [e.data["run_id"] for e in parent_events if e.type == EventType.CHILD_FINISHED]
    assert sorted(finished) == sorted(state.children), "each child reported exactly once"
    assert [e.type for e in parent_events].count("run.completed") == 1


def test_cancel_parent_cancels_children(tmp_path: Path, db_url: str) -> None:
    spec = _parent(tmp_path, (30, 30))
    env = env_for(db_url)
    run_id = cli("start", str(spec), "--input", "go", env=env).stdout.strip()
    worker = start_worker(env, "--lease-ttl", "1", "--poll-interval", "0.1")
    try:

        async def children_running() -> bool:
            store = await Store.open(db_url)
            try:
                kids = await store.list_runs(parent_id=run_id)
                return len(kids) == 2 and all(k.status == "running" for k in kids)
            finally:
                await store.close()

        asyncio.run(wait_until(children_running, timeout=30, what="children to run"))
        result = cli("cancel", run_id, env=env)
        assert result.returncode == 0, result.stderr

        async def all_cancelled() -> bool:
            store = await Store.open(db_url)
            try:
                kids = await store.list_runs(parent_id=run_id)
                parent = await store.get_run(run_id)
                return parent.status == "cancelled" and all(k.status == "cancelled" for k in kids)
            finally:
                await store.close()

        asyncio.run(wait_until(all_cancelled, timeout=30, what="parent and children cancelled"))
    finally:
        stop(worker)


def test_fan_out_limit_is_a_tool_error(tmp_path: Path, sqlite_url: str) -> None:
    spec = _parent(tmp_path, (0.0, 0.0, 0.0))
    data = __import__("yaml").safe_load(spec.read_text())
    data["tools"] = [{"builtin": "subagents", "options": {"max_children": 2}}]
    parse_spec(data)
    spec.write_text(__import__("yaml").safe_dump(data))
    result = cli("run", str(spec), "--input", "go", "--json", env=env_for(sqlite_url))
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    failures = [
        e for e in events if e["type"] == "tool.failed" and e["data"]["name"] == "spawn_agent"
    ]
    assert len(failures) == 1 and "max_children=2" in failures[0]["data"]["error"]
    assert events[-1]["type"] == "run.completed"


@pytest.mark.parametrize("keep", [1, 2, 3])
def test_compaction_cut_never_splits_a_tool_call(keep: int) -> None:
    state = State(
        messages=[
            {"role": "user", "content": "u"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "a", "name": "t"}, {"id": "b", "name": "t"}],
            },
            {"role": "tool", "tool_call_id": "a", "content": "1"},
            {"role": "tool", "tool_call_id": "b", "content": "2"},
            {"role": "assistant", "content": "done"},
        ]
    )
    cut = compaction_cut(state, keep)
    assert cut is not None
    assert state.messages[cut]["role"] != "tool"
    state.summary, state.compacted_until = "s", cut
    _check_view(state)
