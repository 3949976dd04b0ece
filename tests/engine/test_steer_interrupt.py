"""Steer and interrupt, delivered across connections like a cancel (NOTIFY on PostgreSQL,
the control poll on SQLite): a worker and a separate client `Store` on one database."""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from everruns.core.events import (
    SKIPPED_MESSAGE,
    USER_INTERRUPTED_MESSAGE,
    Event,
    EventType,
)
from everruns.core.state import fold
from everruns.engine.worker import Worker
from everruns.settings import Settings
from everruns.spec import parse_spec
from everruns.store import Store
from helpers import TOOLING, openai_stream, read_ledger, wait_until

pytestmark = pytest.mark.timeout(90)
TOOL = {"python": "verbtools:slow_charge"}


@asynccontextmanager
async def running(db_url: str) -> AsyncIterator[tuple[Store, Store]]:
    """(client store, worker store) with an in-process worker on the second."""
    client, own = await Store.open(db_url), await Store.open(db_url)
    worker = Worker(own, lease_ttl=10, poll_interval=0.05, settings=Settings())
    task = asyncio.create_task(worker.run())
    try:
        yield client, own
    finally:
        worker.stop()
        await asyncio.wait_for(task, 20)
        await own.close()
        await client.close()


def _types(events: list[Event]) -> list[str]:
    return [str(e.type) for e in events]


async def _event(store: Store, run_id: str, kind: str, count: int = 1) -> list[Event]:
    async def seen() -> bool:
        return _types(await store.load_events(run_id)).count(kind) >= count

    await wait_until(seen, 30, 0.05, f"{count} x {kind}")
    return await store.load_events(run_id)


async def test_steer_lands_after_the_llm_call_and_before_the_next_in_the_same_turn(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(TOOLING))
    ledger = tmp_path / "ledger"
    monkeypatch.setenv("EVERRUNS_TEST_LEDGER", str(ledger))
    spec = parse_spec(
        {
            "name": "steered",
            "model": {
                "provider": "scripted",
                "responses": [
                    # A 2 s LLM call that plans a tool call; the steer arrives during it.
                    {
                        "delay": 2,
                        "tool_calls": [{"name": "slow_charge", "arguments": {"key": "a"}}],
                    },
                    {"text": "changed course"},
                ],
            },
            "tools": [TOOL],
        }
    )
    async with running(db_url) as (client, _own):
        run_id = await client.create_run(spec, "charge card a")
        await _event(client, run_id, EventType.LLM_STARTED)
        steer = await client.steer(run_id, "stop: do not charge anything")
        events = await _event(client, run_id, EventType.RUN_COMPLETED)
    by_seq = {e.seq: e for e in events}
    kinds = _types(events)
    first_start, second_start = [e.seq for e in events if e.type == EventType.LLM_STARTED]
    (first_done,) = [e.seq for e in events if e.type == EventType.LLM_COMPLETED][:1]
    # Journaled at once, during the first call; the call finished (no work lost) ...
    assert first_start < steer.seq < first_done
    assert by_seq[steer.seq].data == {"content": "stop: do not charge anything", "steer": True}
    assert "llm.failed" not in kinds and "run.interrupted" not in kinds
    # ... the planned tool call was skipped for it, and the next call saw it: same turn.
    (skipped,) = [e for e in events if e.type == EventType.TOOL_FAILED]
    assert skipped.data["skipped"] and skipped.data["error"] == SKIPPED_MESSAGE
    assert first_done < skipped.seq < second_start
    assert kinds.count("run.completed") == 1 and kinds.index("run.completed") == len(kinds) - 1
    assert read_ledger(ledger) == []  # the tool never ran
    roles = [(m["role"], m.get("content")) for m in fold(events).messages]
    assert roles[-2:] == [("user", "stop: do not charge anything"), ("assistant", "changed course")]
    assert roles[1][0] == "assistant" and roles[2][0] == "tool"


class SlowOpenAI:
    """A loopback OpenAI endpoint: request 1 streams forever (until the client hangs up,
    which it records), request 2 asks for the slow tool, request 3 answers."""

    def __init__(self) -> None:
        self.requests = 0
        self.closed = threading.Event()
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                fake.requests += 1
                if fake.requests == 1:
                    return self._forever()
                if fake.requests == 2:
                    return self._send(_tool_call_stream())
                return self._send(openai_stream("all done", 5, 2))

            def _send(self, data: bytes) -> None:
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _forever(self) -> None:
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.end_headers()
                chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m"}
                part = {**chunk, "choices": [{"index": 0, "delta": {"content": "."}}]}
                try:
                    for _ in range(600):
                        self.wfile.write(f"data: {json.dumps(part)}\n\n".encode())
                        self.wfile.flush()
                        time.sleep(0.05)
                except OSError:
                    fake.closed.set()  # the worker closed the stream

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _tool_call_stream() -> bytes:
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m"}
    call = {
        "index": 0,
        "id": "call_charge",
        "type": "function",
        "function": {"name": "slow_charge", "arguments": json.dumps({"key": "b"})},
    }
    parts = [
        {**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "tool_calls": [call]}}]},
        {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    ]
    return ("".join(f"data: {json.dumps(p)}\n\n" for p in parts) + "data: [DONE]\n\n").encode()


async def test_interrupt_cuts_the_stream_and_the_tool_and_a_message_continues(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(TOOLING))
    ledger = tmp_path / "ledger"
    monkeypatch.setenv("EVERRUNS_TEST_LEDGER", str(ledger))
    fake = SlowOpenAI()
    spec = parse_spec(
        {
            "name": "interrupted",
            "model": {"provider": "openai-compatible", "name": "m", "base_url": fake.url},
            "tools": [TOOL],
        }
    )
    try:
        async with running(db_url) as (client, _own):
            run_id = await client.create_run(spec, "go")
            await _event(client, run_id, EventType.LLM_STARTED)
            await wait_until(lambda: _true(fake.requests >= 1), 30, 0.05, "the stream")
            # 1. During the LLM stream: the stream is closed at the server.
            outcome, event, _before = await client.interrupt(run_id)
            assert outcome == "requested" and event is None
            events = await _event(client, run_id, EventType.RUN_INTERRUPTED)
            assert await asyncio.to_thread(fake.closed.wait, 10), "the stream was not closed"
            cut = events[-1]
            assert cut.type == EventType.RUN_INTERRUPTED and cut.data["llm"]["attempt"] == 1
            row = await client.get_run(run_id)
            assert (row.status, row.lease_owner, row.wake_at) == ("waiting", None, None)
            await asyncio.sleep(0.5)
            assert (await client.get_run(run_id)).last_seq == cut.seq  # it waits

            # 2. A message continues it; during the at_most_once tool: outcome unknown.
            await client.signal(run_id, EventType.MESSAGE_USER, {"content": "charge b"})
            await _event(client, run_id, EventType.TOOL_STARTED)
            await wait_until(lambda: _true(len(read_ledger(ledger)) == 1), 30, 0.05, "tool")
            outcome, _, _ = await client.interrupt(run_id)
            assert outcome == "requested"
            events = await _event(client, run_id, EventType.RUN_INTERRUPTED, 2)
            (failed,) = [e for e in events if e.type == EventType.TOOL_FAILED]
            assert failed.data == {
                "call_id": "call_charge",
                "name": "slow_charge",
                "error": USER_INTERRUPTED_MESSAGE,
                "interrupted": True,
            }
            assert events[-1].data["tools"] == [
                {
                    "call_id": "call_charge",
                    "name": "slow_charge",
                    "effect": "at_most_once",
                    "outcome": "unknown",
                }
            ]
            assert (await client.get_run(run_id)).status == "waiting"

            # 3. The next message continues from there.
            await client.signal(run_id, EventType.MESSAGE_USER, {"content": "carry on"})
            events = await _event(client, run_id, EventType.RUN_COMPLETED)
        assert (await client_row(db_url, run_id)).result == "all done"
        assert [e["event"] for e in read_ledger(ledger)] == ["started"]  # cut, never finished
        assert fake.requests == 3
        messages = fold(events).messages
        assert [m["role"] for m in messages] == [
            "user",
            "user",
            "assistant",
            "tool",
            "user",
            "assistant",
        ]
    finally:
        fake.close()


async def _true(value: bool) -> bool:
    return value


async def client_row(db_url: str, run_id: str) -> Any:
    async with await Store.open(db_url) as store:
        return await store.get_run(run_id)
