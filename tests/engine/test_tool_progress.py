"""`ctx.progress` of a plain-function tool (which runs in a thread) reaches live watchers
through the event loop, never from the tool's thread: the broker's asyncio queues are
not thread-safe (a getter woken from another thread may never wake up)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from everruns.core.events import TERMINAL_STATUSES, EventType
from everruns.engine.broker import Broker
from everruns.engine.worker import Worker
from everruns.settings import Settings
from everruns.spec import parse_spec
from everruns.store import Store
from helpers import TOOLING, wait_until


class ThreadRecordingBroker(Broker):
    """Records the thread of each publish of a `tool.progress` event."""

    def __init__(self) -> None:
        super().__init__()
        self.progress: list[tuple[int, dict[str, Any]]] = []

    def publish(self, run_id: str, event: dict[str, Any]) -> None:
        if event["type"] == "tool.progress":
            self.progress.append((threading.get_ident(), event["data"]))
        super().publish(run_id, event)


async def test_progress_from_a_tool_thread_is_published_on_the_loop(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(TOOLING))
    spec = parse_spec(
        {
            "name": "counter",
            "model": {
                "provider": "scripted",
                "responses": [
                    {"tool_calls": [{"name": "count", "arguments": {"n": 5}}]},
                    {"text": "done"},
                ],
            },
            "tools": ["progresstools:count"],
        }
    )
    run_id = await store.create_run(spec, "count")
    broker = ThreadRecordingBroker()
    queue = broker.subscribe(run_id)
    worker = Worker(
        store, lease_ttl=5, poll_interval=0.05, only=[run_id], settings=Settings(), broker=broker
    )
    task = asyncio.create_task(worker.run())
    try:

        async def ended() -> bool:
            return (await store.get_run(run_id)).status in TERMINAL_STATUSES

        await wait_until(ended, timeout=30, interval=0.05, what="the run to end")
    finally:
        worker.stop()
        await task
    events = await store.load_events(run_id)
    (done,) = [e for e in events if e.type in (EventType.TOOL_COMPLETED, EventType.TOOL_FAILED)]
    assert done.type == EventType.TOOL_COMPLETED, done.data
    assert done.data["output"] == "counted to 5"
    assert done.data["progress"] == {"done": 5, "total": 5, "note": "counted 5"}
    assert broker.progress, "no live progress"
    assert {thread for thread, _ in broker.progress} == {threading.get_ident()}
    assert broker.progress[-1][1]["done"] == 5
    assert broker.progress[-1][1]["call_id"] == done.data["call_id"]
    live = [queue.get_nowait() for _ in range(queue.qsize())]
    assert [e["data"] for e in live if e["type"] == "tool.progress"] == [
        data for _, data in broker.progress
    ]
