"""The HTTP API and the SDK against real server processes (uvicorn), on both databases.

Every test starts `python -m everruns.cli server` (and, where the point is a separate
fleet, `everruns worker`) as subprocesses on loopback, drives them through the SDK
(`everruns.Client`) or raw HTTP, and checks the journal. The OpenAPI document and
schemathesis are in test_openapi.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import json
import os
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from cryptography.fernet import Fernet

from everruns import Client
from everruns.client import ApiError, Event
from everruns.store import Store
from helpers import (
    Server,
    cli,
    env_for,
    openai_stream,
    read_ledger,
    reply,
    start_worker,
    stop,
    write_agent,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def server_env(db_url: str, tmp_path: Path) -> dict[str, str]:
    return env_for(db_url, EVERRUNS_TEST_LEDGER=str(tmp_path / "ledger"))


@pytest.fixture
def server(server_env: dict[str, str], tmp_path: Path) -> Iterator[Server]:
    """An API server with an embedded worker, on SQLite or PostgreSQL."""
    s = Server(server_env, "--lease-ttl", "2", log=tmp_path / "server.log")
    try:
        yield s
    finally:
        s.stop()


def _agent(tmp_path: Path, responses: list[dict[str, Any]], **fields: Any) -> Path:
    name = fields.get("name", "test-agent")
    tools = fields.pop("tools", ["ledgertools:idem_record"])
    return write_agent(tmp_path / f"{name}.yaml", responses, tools, **fields)


def _call(key: str, delay: float = 0.0, sleep: float = 0.0) -> dict[str, Any]:
    arguments: dict[str, Any] = {"key": key}
    if sleep:
        arguments["sleep"] = sleep
    return {"tool_calls": [{"name": "idem_record", "arguments": arguments}], "delay": delay}


def _durable(events: list[Event]) -> list[tuple[int | None, str, dict[str, Any]]]:
    return [(e.seq, e.type, e.data) for e in events if not e.ephemeral]


def _until(predicate: Any, timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _sse_events(lines: Iterator[str]) -> Iterator[tuple[str | None, dict[str, Any]]]:
    """(id, data) of each SSE message (comments skipped)."""
    event_id: str | None = None
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                yield event_id, json.loads("\n".join(data))
            event_id, data = None, []
        elif line.startswith("id: "):
            event_id = line[4:]
        elif line.startswith("data: "):
            data.append(line[6:])


def _rows(db_url: str, sql: str) -> list[tuple[Any, ...]]:
    if db_url.startswith("postgresql"):
        with psycopg.connect(db_url) as conn:
            return [tuple(r) for r in conn.execute(sql)]
    with sqlite3.connect(db_url.removeprefix("sqlite:///")) as conn:
        return [tuple(r) for r in conn.execute(sql)]


STEPS = [_call("a", delay=0.3), {"text": "All done with the api.", "delay": 0.3}]


# ---------------------------------------------------------------- 1. full flow


def test_full_flow_through_the_sdk(server: Server, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    with Client(server.url) as client:
        assert client.health() == {"status": "ok"}
        agent = client.agents.create_from_file(_agent(tmp_path, STEPS))
        assert (agent.name, agent.version) == ("test-agent", 1)
        run = client.runs.start(agent.name, input="Survey durable execution")
        # The embedded worker is woken at once: it may have claimed the run already.
        assert run.status in ("queued", "running") and run.agent_version == 1

        streamed = list(client.runs.stream(run.id))
        durable = _durable(streamed)
        types = [t for _, t, _ in durable]
        assert types[0] == "run.created" and types[-1] == "run.completed"
        assert "tool.completed" in types
        assert [s for s, _, _ in durable] == list(range(1, len(durable) + 1))
        assert any(e.type == "llm.delta" for e in streamed if e.ephemeral), "live token deltas"
        # The stream is the journal: same events, same order, same data.
        assert durable == _durable(client.runs.events(run.id))

        done = client.runs.wait(run.id, timeout=30)
        assert done.status == "completed" and done.result == "All done with the api."
        assert done.usage.total_tokens > 0 and done.steps == 2 and done.lease_owner is None
        assert [e["key"] for e in read_ledger(ledger)] == ["a"], "the tool ran once"

        # Agents: get, a version, a changed spec is a new version, the old one is kept.
        assert client.agents.get("test-agent").version == 1
        changed = client.agents.create_from_file(_agent(tmp_path, STEPS, system_prompt="New."))
        assert changed.version == 2
        assert client.agents.get("test-agent").version == 2
        v1 = client.agents.get("test-agent", 1)
        assert v1.version == 1 and v1.spec is not None
        assert v1.spec.get("system_prompt") != "New."
        assert (client.agents.get("test-agent", 2).spec or {})["system_prompt"] == "New."
        with pytest.raises(ApiError) as info:
            client.agents.get("test-agent", 3)
        assert info.value.status == 404 and info.value.type.endswith("/agent-not-found")

        # Lists: more runs than a page, of another agent; filters and cursor pagination.
        client.agents.create_from_file(
            _agent(tmp_path, [{"text": "paged"}], name="pager", tools=[])
        )
        paged = [client.runs.start("pager", input=f"page {i}").id for i in range(7)]
        for run_id in paged:
            assert client.runs.wait(run_id, timeout=30).result == "paged"
        seen: list[str] = []
        cursor = None
        pages = 0
        while True:
            page, cursor = client.runs.list(agent="pager", limit=3, cursor=cursor)
            pages += 1
            assert len(page) <= 3 and {r.agent for r in page} == {"pager"}
            seen += [r.id for r in page]
            if cursor is None:
                break
        assert pages == 3
        assert seen == list(reversed(paged)), "newest first, each run exactly once"
        everything, none_left = client.runs.list(limit=500)
        assert none_left is None and [r.id for r in everything] == [*reversed(paged), run.id]
        completed, _ = client.runs.list(status="completed", agent="test-agent")
        assert [r.id for r in completed] == [run.id]
        assert client.runs.list(status="failed")[0] == []
        r = httpx.get(f"{server.url}/v1/runs", params={"q": "page 3"})
        assert [x["id"] for x in r.json()["items"]] == [paged[3]]

        # Archive: listed as archived, and so is the agent itself.
        r = httpx.post(f"{server.url}/v1/agents/pager/archive")
        assert r.status_code == 200 and r.json() == {"id": "pager", "outcome": "archived"}
        listed = {a.name: a.archived for a in client.agents.list()}
        assert listed == {"pager": True, "test-agent": False}
        assert client.agents.get("pager").archived is True
        assert client.agents.get("test-agent").archived is False
        r = httpx.post(f"{server.url}/v1/agents/nobody/archive")
        assert r.status_code == 404 and r.json()["type"].endswith("/agent-not-found")


# ---------------------------------------------------------------- 2. SSE reconnect


def test_status_shows_the_prompt_cache_hit_ratio(
    server: Server, server_env: dict[str, str], tmp_path: Path
) -> None:
    """Cached input tokens / input tokens, from the journal's usage through the runs row:
    the API's run object, the SDK, and `everruns status` local and with --server."""
    steps = [
        {**_call("a"), "usage": {"input_tokens": 100, "output_tokens": 5}},
        {
            "text": "ok",
            "usage": {"input_tokens": 300, "output_tokens": 5, "cached_input_tokens": 240},
        },
    ]
    with Client(server.url) as client:
        agent = client.agents.create_from_file(_agent(tmp_path, steps))
        run = client.runs.start(agent.name, input="go")
        done = client.runs.wait(run.id, timeout=30)
    assert done.status == "completed"
    assert (done.usage.input_tokens, done.usage.cached_input_tokens) == (400, 240)
    assert done.usage.cache_hit_ratio == pytest.approx(0.6)
    local = json.loads(cli("status", run.id, "--json", env=server_env).stdout)
    assert local["usage"]["cache_hit_ratio"] == pytest.approx(0.6)
    for where in ([], ["--server", server.url]):
        shown = cli("status", run.id, *where, env=server_env)
        assert shown.returncode == 0, shown.stderr
        assert "cached   60% of input tokens read from the prompt cache (240)" in shown.stdout


def test_sse_reconnect_with_last_event_id_replays_each_event_exactly_once(
    server: Server, tmp_path: Path
) -> None:
    slow = [_call(k, delay=0.4) for k in "abcd"] + [{"text": "streamed and done", "delay": 0.4}]
    with Client(server.url) as client:
        client.agents.create_from_file(_agent(tmp_path, slow))
        run = client.runs.start("test-agent", input="go")
        got: list[tuple[int, str, dict[str, Any]]] = []
        url = f"{server.url}/v1/runs/{run.id}/events/stream"
        # Drop the connection after a few events, mid-run.
        with httpx.stream("GET", url, timeout=30) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            for event_id, data in _sse_events(r.iter_lines()):
                if event_id is None:
                    assert data["type"] == "llm.delta"
                    continue
                got.append((int(event_id), data["type"], data["data"]))
                if len(got) == 4:
                    break
        assert not client.runs.get(run.id).done, "the connection was dropped mid-run"
        time.sleep(1.0)  # events keep coming while we are away
        assert client.runs.get(run.id).last_seq > got[-1][0]
        # Reconnect with Last-Event-ID, as a browser's EventSource does.
        with httpx.stream("GET", url, headers={"Last-Event-ID": str(got[-1][0])}, timeout=30) as r:
            for event_id, data in _sse_events(r.iter_lines()):
                if event_id is not None:
                    assert int(event_id) == data["seq"]
                    got.append((data["seq"], data["type"], data["data"]))
        journal = client.runs.events(run.id)
        assert journal[-1].type == "run.completed"
        assert got == [(e.seq, e.type, e.data) for e in journal], "each event once, in order"

        # The SDK resumes the same way from any point, and ?after= works without the header.
        tail = [e.seq for e in client.runs.stream(run.id, after=5) if not e.ephemeral]
        assert tail == [e.seq for e in journal[5:]]
        r = httpx.get(f"{url}?after={journal[-2].seq}", timeout=30)
        assert [ln for ln in r.text.splitlines() if ln.startswith("id: ")] == [
            f"id: {journal[-1].seq}"
        ]
        # A Last-Event-ID that is no seq at all is ignored, never a server error.
        for header in ("junk", "99999999999999999999999", "\u00b2"):
            r = httpx.get(url, headers={"Last-Event-ID": header.encode("latin-1")}, timeout=30)
            assert r.status_code == 200
            ids = [ln for ln in r.text.splitlines() if ln.startswith("id: ")]
            assert ids == (
                []
                if header[0].isdigit() and header.isascii()
                else [f"id: {e.seq}" for e in journal]
            )


def test_sdk_stream_survives_an_api_restart(db_url: str, tmp_path: Path) -> None:
    """The API process is SIGKILLed and restarted while the SDK streams: the SDK
    reconnects with Last-Event-ID and yields every durable event once, in order."""
    env = env_for(db_url, EVERRUNS_TEST_LEDGER=str(tmp_path / "ledger"))
    api = Server(env, "--no-worker", log=tmp_path / "api.log")
    worker = start_worker(env, "--lease-ttl", "5", "--poll-interval", "0.1")
    try:
        steps = [_call(k, delay=0.3, sleep=0.4) for k in "abcde"] + [{"text": "ok", "delay": 0.3}]
        with Client(api.url, reconnect_delay=0.2) as client:
            client.agents.create_from_file(_agent(tmp_path, steps))
            run = client.runs.start("test-agent", input="go")
            got: list[Event] = []
            restarted = False
            for event in client.runs.stream(run.id, include_ephemeral=False):
                got.append(event)
                if event.type == "tool.completed" and not restarted:
                    api.restart()
                    restarted = True
            assert restarted and got[-1].type == "run.completed"
            assert _durable(got) == _durable(client.runs.events(run.id))
    finally:
        stop(worker)
        api.stop()


# ---------------------------------------------------------------- 2+3. a separate fleet


def _listening(pg_url: str) -> int:
    rows = _rows(
        pg_url,
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND query ILIKE 'LISTEN everruns_events%'",
    )
    return int(rows[0][0])


def test_takeover_while_streaming_through_a_separate_worker(db_url: str, tmp_path: Path) -> None:
    """API with --no-worker; the worker is another process, SIGKILLed mid-run while the
    client streams; a second worker takes over. The SSE connection is never dropped,
    the client sees the takeover's run.started (a higher epoch) and the completion.
    On PostgreSQL, events reach the API through LISTEN/NOTIFY: the API's stream sleeps
    up to 5 s between journal reads while it listens, so sub-second delivery of every
    event proves the notifications."""
    env = env_for(db_url, EVERRUNS_TEST_LEDGER=str(tmp_path / "ledger"))
    api = Server(env, "--no-worker", log=tmp_path / "api.log")
    steps = [_call(k, delay=0.5, sleep=0.2) for k in "abc"] + [
        {"text": "finished after takeover", "delay": 0.4}
    ]
    first = start_worker(
        env, "--lease-ttl", "1", "--poll-interval", "0.1", log=tmp_path / "worker1.log"
    )
    second: subprocess.Popen[bytes] | None = None
    pg = db_url.startswith("postgresql")
    try:
        if pg:
            _until(lambda: _listening(db_url) >= 1, 10, "the API to LISTEN")
        with Client(api.url) as client:
            client.agents.create_from_file(_agent(tmp_path, steps))
            run = client.runs.start("test-agent", input="go")
            events: list[Event] = []
            lags: list[float] = []
            connected = time.time()
            # max_reconnects=0: any dropped SSE connection raises here.
            for event in client.runs.stream(run.id, include_ephemeral=False, max_reconnects=0):
                events.append(event)
                assert event.ts is not None
                if event.ts > connected:  # written while we were connected: live
                    lags.append(time.time() - event.ts)
                    if pg:
                        assert lags[-1] < 1.5, f"NOTIFY did not wake the stream: {lags}"
                if event.type == "tool.completed" and second is None:
                    assert not client.runs.get(run.id).done
                    first.send_signal(signal.SIGKILL)  # mid-run, while the client streams
                    first.wait(10)
                    second = start_worker(
                        env,
                        "--lease-ttl",
                        "5",
                        "--poll-interval",
                        "0.1",
                        log=tmp_path / "worker2.log",
                    )
            if pg:
                assert len(lags) >= 8, lags
                assert _listening(db_url) >= 1
            assert second is not None, "the worker was killed mid-run"
            assert events[-1].type == "run.completed"
            assert events[-1].data["result"] == "finished after takeover"
            started = [e.data for e in events if e.type == "run.started"]
            assert len(started) >= 2
            assert [s["epoch"] for s in started] == sorted({s["epoch"] for s in started})
            assert started[-1]["takeover"] is True and started[-1]["crashes"] >= 1
            assert started[0]["worker"] != started[-1]["worker"]
            assert _durable(events) == _durable(client.runs.events(run.id))
            done = client.runs.get(run.id)
            assert done.status == "completed" and done.epoch == started[-1]["epoch"]
    finally:
        stop(first)
        if second is not None:
            stop(second)
        api.stop()
    assert "Traceback" not in (tmp_path / "api.log").read_text()


# ---------------------------------------------------------------- 4. controls


def _wait_status(client: Client, run_id: str, status: str, timeout: float = 30) -> None:
    _until(lambda: client.runs.get(run_id).status == status, timeout, f"{run_id} {status}")


def test_pause_resume_and_messages(server: Server, tmp_path: Path) -> None:
    steps = [
        _call("a", delay=0.2, sleep=1.2),
        _call("b", delay=0.2, sleep=1.5),
        {"text": "first answer", "delay": 0.2},
        {"text": "answer to the new turn", "delay": 0.2},
    ]
    with Client(server.url) as client:
        client.agents.create_from_file(_agent(tmp_path, steps))
        run = client.runs.start("test-agent", input="go")
        # Pause while a tool is running: the pause lands after that atom.
        for event in client.runs.stream(run.id, include_ephemeral=False):
            if event.type == "tool.started":
                break
        assert client.runs.get(run.id).status == "running"
        assert client.runs.pause(run.id) == "requested"
        _wait_status(client, run.id, "paused")
        paused = client.runs.get(run.id)
        assert paused.lease_owner is None, "the lease was released"
        journal = client.runs.events(run.id)
        assert journal[-1].type == "run.paused"
        assert journal[-2].type in ("tool.completed", "llm.completed"), "after an atom"
        types = [e.type for e in journal]
        assert types.count("tool.started") == types.count("tool.completed")
        assert types.count("llm.started") == types.count("llm.completed")
        assert client.runs.pause(run.id) == "paused"
        time.sleep(1.5)
        still = client.runs.get(run.id)
        assert (still.status, still.last_seq) == ("paused", paused.last_seq), "nothing happens"
        assert [e["key"] for e in read_ledger(tmp_path / "ledger")] == ["a"]

        assert client.runs.resume(run.id) == "queued"
        # A message into the running run, while tool b runs: the next step answers it.
        for event in client.runs.stream(run.id, after=paused.last_seq, include_ephemeral=False):
            if event.type == "tool.started" and event.data.get("name") == "idem_record":
                break
        message = client.runs.message(run.id, "and a follow-up?")
        assert message.type == "message.user" and message.seq is not None
        done = client.runs.wait(run.id, timeout=30)
        assert done.status == "completed" and done.result == "first answer"
        journal = client.runs.events(run.id)
        types = [e.type for e in journal]
        assert "run.resumed" in types and types[-1] == "run.completed"
        after = [e.type for e in journal if e.seq > message.seq]
        assert "llm.completed" in after, "the message was answered"
        answered = next(e for e in journal if e.seq > message.seq and e.type == "llm.started")
        assert answered.seq < journal[-1].seq

        # A message into the finished run starts a new turn.
        client.runs.message(run.id, "one more")
        again = client.runs.wait(run.id, timeout=30)
        assert (again.status, again.result) == ("completed", "answer to the new turn")
        assert [e["key"] for e in read_ledger(tmp_path / "ledger")] == ["a", "b"]


def test_approve_and_deny_through_the_api(server: Server, tmp_path: Path) -> None:
    steps = [
        {
            "tool_calls": [
                {"name": "idem_record", "arguments": {"key": "a"}},
                {"name": "idem_record", "arguments": {"key": "b"}},
            ]
        },
        {"text": "done"},
    ]
    with Client(server.url) as client:
        client.agents.create_from_file(
            _agent(tmp_path, steps, approvals={"require_for": ["idem_record"]})
        )
        run = client.runs.start("test-agent", input="go")
        _until(lambda: len(httpx.get(f"{server.url}/v1/approvals").json()) == 2, 20, "approvals")
        pending = httpx.get(f"{server.url}/v1/approvals").json()
        assert {(p["run_id"], p["call_id"]) for p in pending} == {
            (run.id, "call_1_1"),
            (run.id, "call_1_2"),
        }
        waiting = client.runs.get(run.id)
        assert waiting.status == "waiting" and waiting.lease_owner is None
        assert read_ledger(tmp_path / "ledger") == [], "nothing runs before the decision"
        granted = client.runs.approve(run.id, "call_1_1")
        assert granted.type == "approval.granted"
        client.runs.deny(run.id, "call_1_2", "not this one")
        with pytest.raises(ApiError) as info:
            client.runs.approve(run.id, "call_9_9")
        assert info.value.status == 409 and info.value.type.endswith("/no-pending-approval")
        assert client.runs.wait(run.id, timeout=30).status == "completed"
        failed = [e for e in client.runs.events(run.id) if e.type == "tool.failed"]
        assert [e.data["error"] for e in failed] == ["denied by a human: not this one"]
        assert [e["key"] for e in read_ledger(tmp_path / "ledger")] == ["a"], "b never ran"
        with pytest.raises(ApiError) as info:
            client.runs.approve(run.id, "call_1_2")
        assert info.value.status == 409


def test_fork_and_cancel(server: Server, tmp_path: Path) -> None:
    steps = [_call("a"), _call("b"), {"text": "source done"}]
    with Client(server.url) as client:
        client.agents.create_from_file(_agent(tmp_path, steps))
        run = client.runs.start("test-agent", input="go")
        assert client.runs.wait(run.id, timeout=30).result == "source done"
        source = client.runs.events(run.id)
        # Fork right after the first tool result: the fork redoes the rest.
        k = next(e.seq for e in source if e.type == "tool.completed")
        assert k is not None
        fork = client.runs.fork(run.id, k)
        assert fork.id != run.id and fork.last_seq >= k + 1
        done = client.runs.wait(fork.id, timeout=30)
        assert (done.status, done.result) == ("completed", "source done")
        forked = client.runs.events(fork.id)
        assert [(e.type, e.data) for e in forked[:k]] == [(e.type, e.data) for e in source[:k]]
        assert forked[k].type == "run.forked"
        assert forked[k].data == {"from_run": run.id, "at_seq": k, "agent_version": 1}
        assert forked[-1].type == "run.completed"
        assert client.runs.events(run.id) == source, "the source is untouched"
        assert client.runs.get(run.id).last_seq == source[-1].seq
        for bad in (0, source[-1].seq + 1):
            r = httpx.post(f"{server.url}/v1/runs/{run.id}/fork", json={"seq": bad})
            assert r.status_code in (409, 422) and r.status_code < 500

        # Cancel a running run: it ends cancelled, and its stream ends with it.
        slow = client.runs.start(
            spec={
                "name": "slow",
                "model": {"provider": "scripted", "responses": [{"text": "x", "delay": 30}]},
            },
            input="x",
        )
        _wait_status(client, slow.id, "running")
        assert client.runs.cancel(slow.id) == "requested"
        tail = [e for e in client.runs.stream(slow.id, include_ephemeral=False)]
        assert tail[-1].type == "run.cancelled"
        cancelled = client.runs.wait(slow.id, timeout=30)
        assert cancelled.status == "cancelled" and cancelled.lease_owner is None
        assert client.runs.cancel(slow.id) == "cancelled"
        with pytest.raises(ApiError) as info:
            client.runs.message(slow.id, "too late")
        assert info.value.status == 409


# ---------------------------------------------------------------- 5. errors


def test_problem_details_and_never_a_500(server: Server, tmp_path: Path) -> None:
    base = server.url
    problem = "application/problem+json"
    pg = "postgresql" in server.env["EVERRUNS_DATABASE_URL"]

    def check(r: httpx.Response, status: int, kind: str) -> dict[str, Any]:
        assert r.status_code == status, (r.request.method, r.request.url, r.text)
        assert r.headers["content-type"] == problem
        body = r.json()
        assert body["status"] == status and body["type"].endswith("/" + kind), body
        assert body["title"] and body["detail"]
        return body

    # Unknown run: 404 run-not-found on every run route.
    for method, path, body in [
        ("GET", "/v1/runs/run_nope", None),
        ("GET", "/v1/runs/run_nope/events", None),
        ("GET", "/v1/runs/run_nope/events/stream", None),
        ("POST", "/v1/runs/run_nope/cancel", None),
        ("POST", "/v1/runs/run_nope/pause", None),
        ("POST", "/v1/runs/run_nope/resume", None),
        ("POST", "/v1/runs/run_nope/messages", {"content": "hi"}),
        ("POST", "/v1/runs/run_nope/fork", {"seq": 1}),
        ("POST", "/v1/runs/run_nope/approvals/call_1", {"approve": True}),
    ]:
        found = check(httpx.request(method, base + path, json=body), 404, "run-not-found")
        assert found["instance"] == path
    check(httpx.get(f"{base}/v1/agents/nobody"), 404, "agent-not-found")
    check(httpx.post(f"{base}/v1/runs", json={"agent": "nobody"}), 404, "agent-not-found")
    check(httpx.get(f"{base}/v1/no-such-route"), 404, "not-found")
    with Client(base) as client, pytest.raises(ApiError) as info:
        client.runs.get("run_nope")
    assert info.value.status == 404 and info.value.type.endswith("/run-not-found")

    # Invalid bodies: 422 with the field's path.
    def fields(r: httpx.Response, kind: str) -> list[str]:
        return [e["field"] for e in check(r, 422, kind)["errors"]]

    assert fields(httpx.post(f"{base}/v1/runs", json={"agent": 5}), "validation-error") == ["agent"]
    assert fields(httpx.post(f"{base}/v1/runs", json={"bogus": 1}), "validation-error") == ["bogus"]
    assert fields(httpx.post(f"{base}/v1/runs/x/fork", json={"seq": 0}), "validation-error") == [
        "seq"
    ]
    assert fields(
        httpx.post(f"{base}/v1/runs/x/messages", json={"content": ""}), "validation-error"
    ) == ["content"]
    assert fields(
        httpx.post(f"{base}/v1/runs/x/approvals/c", json={"approve": "maybe"}),
        "validation-error",
    ) == ["approve"]
    check(
        httpx.post(f"{base}/v1/runs", json={"agent": "a", "spec": {"name": "a"}}),
        422,
        "validation-error",
    )
    r = httpx.post(
        f"{base}/v1/agents", content=b"{" * 10, headers={"content-type": "application/json"}
    )
    check(r, 422, "validation-error")
    # Invalid specs: 422 invalid-spec, with the path inside the spec.
    bad_specs = [
        ({"name": "x", "model": "nope"}, "model"),
        ({"name": "x", "model": {"provider": "scripted", "responses": "no"}}, "model.responses"),
        ({"name": "x", "model": {"provider": "warp"}}, "model.provider"),
        (
            {"name": "x", "model": "openai:gpt-4.1", "tools": [{"python": "nomodule:fn"}]},
            "tools[0].python",
        ),
    ]
    for spec, field in bad_specs:
        assert field in fields(httpx.post(f"{base}/v1/runs", json={"spec": spec}), "invalid-spec")
        assert field in fields(httpx.post(f"{base}/v1/agents", json={"spec": spec}), "invalid-spec")
    assert fields(
        httpx.post(f"{base}/v1/agents", json={"yaml": "name: x\nmodel: nope\n"}), "invalid-spec"
    ) == ["model"]
    check(httpx.post(f"{base}/v1/agents", json={"yaml": "name: [x\n"}), 422, "invalid-spec")

    # Oversized bodies: 413, with a declared length and without one (chunked).
    huge = b'{"content": "' + b"x" * 3_000_000 + b'"}'
    check(
        httpx.post(
            f"{base}/v1/runs/x/messages", content=huge, headers={"content-type": "application/json"}
        ),
        413,
        "too-large",
    )

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(huge), 65536):
            yield huge[i : i + 65536]

    r = httpx.post(
        f"{base}/v1/runs/x/messages", content=chunks(), headers={"content-type": "application/json"}
    )
    assert "content-length" not in r.request.headers
    check(r, 413, "too-large")

    # Query parameters.
    check(httpx.get(f"{base}/v1/runs?cursor=garbage"), 422, "validation-error")
    check(httpx.get(f"{base}/v1/runs?cursor=~"), 422, "validation-error")
    assert (
        "status"
        in check(httpx.get(f"{base}/v1/runs?status=bogus"), 422, "validation-error")["detail"]
    )
    for query in ("limit=0", "limit=501", "limit=x"):
        check(httpx.get(f"{base}/v1/runs?{query}"), 422, "validation-error")
    check(httpx.get(f"{base}/v1/runs/x/events?after=-1"), 422, "validation-error")
    check(httpx.get(f"{base}/v1/agents/x/versions/0"), 422, "validation-error")
    check(httpx.get(f"{base}/v1/agents/x/versions/99999999999"), 422, "validation-error")

    # NUL characters (PostgreSQL text cannot hold them), anywhere: a 4xx, never a 500.
    spec = {"name": "nul", "model": {"provider": "scripted", "responses": [{"text": "o\x00k"}]}}
    for method, path, params, body in [
        ("POST", "/v1/runs", None, {"spec": spec, "input": "a\x00b"}),
        ("GET", "/v1/runs", {"q": "a\x00b"}, None),
        ("GET", "/v1/runs", {"agent": "a\x00b"}, None),
        ("GET", "/v1/runs", {"cursor": "1.5~a\x00b"}, None),
        ("GET", "/v1/runs/a%00b", None, None),
        ("GET", "/v1/runs/a%00b/events/stream", None, None),
        ("POST", "/v1/runs/a%00b/cancel", None, None),
        ("POST", "/v1/runs/a%00b/fork", None, {"seq": 1}),
        ("GET", "/v1/agents/a%00b", None, None),
        ("POST", "/v1/schedules", None, {"spec": spec, "schedule": "every 1h", "input": "\x00"}),
    ]:
        r = httpx.request(method, base + path, params=params, json=body)
        assert r.status_code < 500, (method, path, r.status_code, r.text)
        if r.status_code >= 400:
            assert r.headers["content-type"] == problem
        elif method == "POST" and pg:  # SQLite stores NUL; PostgreSQL refuses it
            raise AssertionError(f"{path} accepted NUL on PostgreSQL: {r.text}")
    # A model that answers with a NUL character does not break the run.
    with Client(base) as client:
        run = client.runs.start(spec=spec, input="go")
        done = client.runs.wait(run.id, timeout=30)
        assert done.status == "completed" and done.result in ("o\x00k", "o\ufffdk")
        assert client.runs.events(run.id)[-1].data["result"] == "o\x00k", "the journal is exact"

    log = server.log.read_text()
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log[-3000:]


# ---------------------------------------------------------------- 6. auth and secrets


class FakeOpenAI:
    """A loopback OpenAI chat-completions endpoint that streams one answer and records
    the Authorization header of each request (proof the stored key was used)."""

    def __init__(self, key: str):
        self.seen: list[str] = []
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                json.loads(self.rfile.read(length) or b"{}")
                auth = self.headers.get("authorization", "")
                fake.seen.append(auth)
                if auth != f"Bearer {key}":
                    body = json.dumps(
                        {"error": {"message": "bad key", "type": "invalid_request_error"}}
                    ).encode()
                    reply(self, 401, "application/json", body)
                    return
                reply(self, 200, "text/event-stream", openai_stream("keyed answer", 5, 2))

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_auth_tokens_and_secrets_never_leak(db_url: str, tmp_path: Path) -> None:
    key = "sk-live-SECRET-" + os.urandom(8).hex()
    master = Fernet.generate_key()
    env = env_for(db_url, EVERRUNS_MASTER_KEY=master.decode())
    for name in ("OPENAI_API_KEY", "EVERRUNS_TOKEN"):
        env.pop(name, None)
    created = cli("token", "create", "--name", "ci", env=env)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert token and token not in created.stderr
    fake = FakeOpenAI(key)
    log = tmp_path / "server.log"
    server = Server(env, "--auth", "--lease-ttl", "2", log=log)
    seen: list[str] = []  # every response body and stream the API sent
    try:
        base = server.url
        assert httpx.get(f"{base}/v1/health").status_code == 200  # probes need no token
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {token}"}):
            r = httpx.get(f"{base}/v1/runs", headers=headers)
            assert r.status_code == 401 and r.json()["type"].endswith("/unauthorized")
        r = httpx.put(f"{base}/v1/secrets/OPENAI_API_KEY", json={"value": key})
        assert r.status_code == 401, "secrets need a token"
        with Client(base, "wrong-token") as bad, pytest.raises(ApiError) as info:
            bad.runs.list()
        assert info.value.status == 401

        auth = {"Authorization": f"Bearer {token}"}
        bound = {"value": key, "allow_urls": [fake.url + "/*"]}
        r = httpx.put(f"{base}/v1/secrets/OPENAI_API_KEY", json=bound, headers=auth)
        assert r.status_code == 204 and r.content == b""
        r = httpx.get(f"{base}/v1/secrets", headers=auth)
        assert r.json() == ["OPENAI_API_KEY"]
        seen.append(r.text)
        with Client(base, token) as client:
            # The embedded worker calls the (fake, loopback) OpenAI with the stored key.
            run = client.runs.start(
                spec={
                    "name": "keyed",
                    "model": {
                        "provider": "openai",
                        "name": "gpt-4.1",
                        "base_url": fake.url,
                        "credential": "OPENAI_API_KEY",
                    },
                },
                input="use the stored key",
            )
            streamed = list(client.runs.stream(run.id))
            done = client.runs.wait(run.id, timeout=30)
            assert (done.status, done.result) == ("completed", "keyed answer"), done.error
            assert fake.seen == [f"Bearer {key}"], "the stored key was decrypted and used"
            seen.append(json.dumps([e.model_dump() for e in streamed]))
            seen.append(json.dumps([e.model_dump() for e in client.runs.events(run.id)]))
            seen.append(client.runs.get(run.id).model_dump_json())
        # The browser's EventSource passes the token as ?access_token= on the stream only.
        stream = f"{base}/v1/runs/{run.id}/events/stream"
        r = httpx.get(stream, params={"access_token": token}, timeout=30)
        assert r.status_code == 200 and "run.completed" in r.text
        seen.append(r.text)
        assert httpx.get(stream, params={"access_token": "nope"}).status_code == 401
        assert httpx.get(f"{base}/v1/runs", params={"access_token": token}).status_code == 401
        for path in (
            "/v1/runs",
            "/v1/agents",
            "/v1/agents/keyed",
            "/v1/approvals",
            "/v1/workers",
            "/v1/schedules",
            "/metrics",
            "/openapi.json",
            "/v1/ready",
        ):
            r = httpx.get(base + path, headers=auth)
            assert r.status_code == 200, (path, r.text)
            seen.append(r.text)
        # A revoked token stops working at once.
        token_id = _rows(db_url, "SELECT id FROM api_tokens")[0][0]
        assert cli("token", "revoke", token_id, env=env).returncode == 0
        assert httpx.get(f"{base}/v1/runs", headers=auth).status_code == 401
    finally:
        server.stop()
        fake.close()
    output = log.read_text()
    assert "everruns server on" in output, "the log was captured"
    for text in [*seen, output, created.stdout + created.stderr]:
        assert key not in text, "the provider key leaked"
    assert token not in output, "the API token leaked into the log"
    # At rest: tokens only as sha256, the key only as Fernet ciphertext under the master key.
    for row in _rows(db_url, "SELECT * FROM api_tokens"):
        assert all(token not in str(value) for value in row)
    hashes = [r[0] for r in _rows(db_url, "SELECT token_hash FROM api_tokens")]
    assert hashes == [hashlib.sha256(token.encode()).hexdigest()]
    ((name, ciphertext),) = _rows(db_url, "SELECT name, ciphertext FROM secrets")
    assert name == "OPENAI_API_KEY" and key not in ciphertext and ciphertext != key
    assert Fernet(master).decrypt(ciphertext.encode()).decode() == key
    for (data,) in _rows(db_url, "SELECT data FROM events"):
        assert key not in str(data)


# ---------------------------------------------------------------- the async SDK


async def test_async_client_streams_and_waits(sqlite_url: str, tmp_path: Path) -> None:
    from everruns import AsyncClient

    server = Server(env_for(sqlite_url), "--lease-ttl", "2", log=tmp_path / "server.log")
    try:
        async with AsyncClient(server.url) as client:
            agent = await client.agents.create_from_file(_agent(tmp_path, STEPS))
            run = await client.runs.start(agent.name, input="async")
            events = [e async for e in client.runs.stream(run.id)]
            durable = [e for e in events if not e.ephemeral]
            assert [e.seq for e in durable] == list(range(1, len(durable) + 1))
            assert durable[-1].type == "run.completed"
            assert any(e.type == "llm.delta" for e in events if e.ephemeral)
            done = await client.runs.wait(run.id, timeout=30)
            assert done.result == "All done with the api."
            slow = await client.runs.start(
                spec={
                    "name": "slow",
                    "model": {"provider": "scripted", "responses": [{"text": "x", "delay": 30}]},
                },
                input="x",
            )
            with pytest.raises(TimeoutError):
                await client.runs.wait(slow.id, timeout=1)
            await client.runs.cancel(slow.id)
            assert (await client.runs.wait(slow.id, timeout=20)).status == "cancelled"
    finally:
        server.stop()


def test_lists_are_brief_children_filter_and_memory_routes(
    server: Server, server_env: dict[str, str], tmp_path: Path, db_url: str
) -> None:
    """GET /v1/runs cuts input and result to 200 characters (`truncated: true`), the run
    and the SDK's `get` keep them whole; `parent_id` lists a run's children; an agent's
    memory is listed, deleted one by one and cleared (issue 15)."""
    long = "x" * 5000
    spec = _agent(tmp_path, [{"text": "y" * 300}], tools=[], name="brief")
    with Client(server.url) as client:
        client.agents.create_from_file(spec)
        run = client.runs.start("brief", input=long)
        client.runs.wait(run.id, timeout=30)
        items, _ = client.runs.list(agent="brief")
        assert [(r.id, len(r.input or ""), len(r.result or ""), r.truncated) for r in items] == [
            (run.id, 200, 200, True)
        ]
        whole = client.runs.get(run.id)
        assert (whole.input, whole.result, whole.truncated) == (long, "y" * 300, False)
    assert httpx.get(f"{server.url}/v1/runs?parent_id={run.id}").json()["items"] == []
    # The CLI's `ls --json` prints them whole through the API too, as on a local database.
    listed = cli("ls", "--agent", "brief", "--json", "--server", server.url, env=server_env)
    assert listed.returncode == 0, listed.stderr
    assert [(r["input"], r["result"]) for r in json.loads(listed.stdout)] == [(long, "y" * 300)]

    async def notes() -> list[str]:
        store = await Store.open(db_url)
        try:
            return [(await store.remember("brief", t))["id"] for t in ("one", "two")]
        finally:
            await store.close()

    first, _ = asyncio.run(notes())
    path = f"{server.url}/v1/agents/brief/memory"
    items = httpx.get(path).json()["items"]
    assert [i["value"] for i in items] == ["one", "two"] and items[0]["key"] == first
    assert all(isinstance(i["updated_at"], float) for i in items)
    assert httpx.delete(f"{path}/{first}").status_code == 204
    assert httpx.delete(f"{path}/{first}").status_code == 404
    assert [i["value"] for i in httpx.get(path).json()["items"]] == ["two"]
    assert httpx.delete(path).status_code == 204
    assert httpx.get(path).json() == {"items": []}
