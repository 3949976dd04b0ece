"""The journal's hot path (store/writer.py) and the worker's wake-ups (engine/signals.py).

* Group commit: appends of several runs queued while a commit is in flight are committed in
  one transaction, each still fenced by its own epoch; a fenced-out run's events are
  rejected alone, never the batch.
* More runs than database connections: back-pressure, no engine crash.
* PostgreSQL: an idle worker is woken by NOTIFY when a run is queued (its poll interval is
  far longer than the test), and a cancel reaches the run's holder by NOTIFY, not at the next
  lease renewal. SQLite: the worker's control poll does it, also before any renewal.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import make_url

from everruns.core.events import (
    LLM_COMPLETED,
    LLM_STARTED,
    RUN_CANCELLED,
    RUN_CREATED,
    TERMINAL_STATUSES,
    Event,
)
from everruns.engine.worker import Worker
from everruns.spec import parse_spec
from everruns.store import Fenced, Store
from everruns.store.writer import PostgresJournalWriter, SQLiteJournalWriter


def spec(name: str = "hot", responses: list[dict[str, Any]] | None = None) -> Any:
    return parse_spec(
        {
            "name": name,
            "model": {"provider": "scripted", "responses": responses or [{"text": "ok"}]},
        }
    )


async def claimed_runs(store: Store, n: int) -> list[tuple[str, int]]:
    ids = [await store.create_run(spec(), "go") for _ in range(n)]
    claims = await store.claim("w", limit=n, lease_ttl=60)
    by_id = {c.run_id: c.epoch for c in claims}
    return [(run_id, by_id[run_id]) for run_id in ids]


async def llm_started(store: Store, run_id: str) -> bool:
    return any(e.type == LLM_STARTED for e in await store.load_events(run_id))


async def until(check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


class BlockedWriter:
    """Holds the database so the writer's first commit waits, while more appends queue."""

    def __init__(self, url: str):
        self.url = url
        self.release = threading.Event()
        self.held = threading.Event()

    def hold_sqlite(self) -> threading.Thread:
        path = make_url(self.url).database
        assert path

        def hold() -> None:
            conn = sqlite3.connect(path, isolation_level=None)
            conn.execute("BEGIN IMMEDIATE")
            self.held.set()
            self.release.wait(30)
            conn.execute("COMMIT")
            conn.close()

        thread = threading.Thread(target=hold)
        thread.start()
        return thread


async def test_group_commit_rejects_only_the_fenced_run(db_url: str) -> None:
    store = await Store.open(db_url)
    try:
        writer = store.writer
        assert writer is not None
        batches: list[list[str]] = []
        writer.on_commit = batches.append
        (first, e0), (ok1, e1), (fenced, e2), (ok2, e3) = await claimed_runs(store, 4)
        # The fenced run is taken over by another worker (its epoch moves on).
        await store.release(fenced, e2, wake_at=time.time(), status="queued")
        await store.claim("other", limit=5, lease_ttl=60)

        blocker = BlockedWriter(db_url)
        holder: Any = None
        if isinstance(writer, SQLiteJournalWriter):
            thread = blocker.hold_sqlite()
            await asyncio.to_thread(blocker.held.wait, 10)
        else:
            assert isinstance(writer, PostgresJournalWriter)
            holder = await psycopg.AsyncConnection.connect(writer.conninfo)
            await holder.execute("SELECT 1 FROM runs WHERE id = %s FOR UPDATE", (first,))

        def append(run_id: str, epoch: int) -> asyncio.Task[list[Event]]:
            return asyncio.create_task(
                store.append(run_id, epoch, [(LLM_STARTED, {"attempt": 1, "step": 1})])
            )

        blocked = append(first, e0)  # taken by the writer, waits for the database
        await asyncio.sleep(0.3)
        queued = [append(ok1, e1), append(fenced, e2), append(ok2, e3)]
        await asyncio.sleep(0.3)
        if holder is None:
            blocker.release.set()
            await asyncio.to_thread(thread.join, 10)
        else:
            await holder.commit()
            await holder.close()
        await blocked
        results = await asyncio.gather(*queued, return_exceptions=True)
    finally:
        await store.close()

    assert [ok1, fenced, ok2] in batches, f"the three appends were not one commit: {batches}"
    assert isinstance(results[1], Fenced), results
    assert not isinstance(results[0], BaseException) and not isinstance(results[2], BaseException)
    store = await Store.open(db_url, migrate=False)
    try:
        for run_id in (ok1, ok2):
            types = [e.type for e in await store.load_events(run_id)]
            assert types == [RUN_CREATED, LLM_STARTED], types
        assert [e.type for e in await store.load_events(fenced)] == [RUN_CREATED]
    finally:
        await store.close()


async def test_a_bad_append_fails_alone(sqlite_url: str) -> None:
    """A statement that raises inside a batch rolls the batch back; the others are retried
    one per transaction and commit."""
    store = await Store.open(sqlite_url)
    try:
        writer = store.writer
        assert writer is not None
        batches: list[list[str]] = []
        writer.on_commit = batches.append
        (first, e0), (a, ea), (b, eb) = await claimed_runs(store, 3)
        blocker = BlockedWriter(sqlite_url)
        thread = blocker.hold_sqlite()
        await asyncio.to_thread(blocker.held.wait, 10)
        blocked = asyncio.create_task(store.append(first, e0, [(LLM_STARTED, {"attempt": 1})]))
        await asyncio.sleep(0.3)
        good = asyncio.create_task(store.append(a, ea, [(LLM_STARTED, {"attempt": 1})]))
        # A lone surrogate cannot be encoded as UTF-8: the driver refuses the row.
        bad = asyncio.create_task(
            store.append(b, eb, [(LLM_STARTED, {"attempt": 1, "bad": "\ud800"})])
        )
        await asyncio.sleep(0.3)
        blocker.release.set()
        await asyncio.to_thread(thread.join, 10)
        await blocked
        results = await asyncio.gather(good, bad, return_exceptions=True)
        assert isinstance(results[1], UnicodeEncodeError), results
        assert not isinstance(results[0], BaseException), results
        assert [a] in batches, f"the good append was not committed alone: {batches}"
        assert [e.type for e in await store.load_events(a)] == [RUN_CREATED, LLM_STARTED]
        assert [e.type for e in await store.load_events(b)] == [RUN_CREATED]
    finally:
        await store.close()


async def test_more_runs_than_connections(db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """40 runs at once on a pool of 2 (+2 overflow) connections: every run completes; pool
    exhaustion is back-pressure, never an engine crash."""
    store = await Store.open(db_url, pool_size=2)
    caplog.set_level(logging.ERROR, logger="everruns")
    try:
        responses = [
            {"tool_calls": [], "text": "thinking", "delay": 0.05},
        ]
        ids = [await store.create_run(spec("many", responses), "go") for _ in range(40)]
        worker = Worker(store, concurrency=40, lease_ttl=30, poll_interval=0.05)
        task = asyncio.create_task(worker.run())
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            rows = [await store.get_run(r) for r in ids]
            if all(r.status in TERMINAL_STATUSES for r in rows):
                break
            await asyncio.sleep(0.1)
        worker.stop()
        await task
        assert [r.status for r in rows] == ["completed"] * 40
    finally:
        await store.close()
    assert not [r for r in caplog.records if "crashed in the engine" in r.getMessage()]


@pytest.mark.postgres
async def test_idle_worker_is_woken_by_notify(pg_url: str) -> None:
    store = await Store.open(pg_url)
    other = await Store.open(pg_url, migrate=False)
    try:
        worker = Worker(store, concurrency=4, lease_ttl=30, poll_interval=60)
        task = asyncio.create_task(worker.run())
        assert worker.listener is not None
        await asyncio.wait_for(worker.listener.listening.wait(), 10)
        await asyncio.sleep(0.2)  # the worker has done its first claim and sleeps now
        before = worker.signals["wake"]
        started = time.monotonic()
        run_id = await other.create_run(spec(), "go")  # another process's store
        while (await other.get_run(run_id)).status != "completed":
            assert time.monotonic() - started < 30, "the run was not picked up"
            await asyncio.sleep(0.02)
        waited = time.monotonic() - started
        worker.stop()
        await task
    finally:
        await other.close()
        await store.close()
    assert worker.signals["wake"] > before, "no NOTIFY reached the worker"
    assert waited < 60, "picked up by the poll, not by the notification"


async def test_a_stop_during_a_claim_is_not_slept_through(db_url: str) -> None:
    """`stop()` arriving while the claim query is awaited: the worker's idle wait must
    return at once, not after its poll interval (60 s here)."""
    store = await Store.open(db_url)
    try:
        worker = Worker(store, concurrency=1, lease_ttl=30, poll_interval=60)
        claim = store.claim
        claims = 0

        async def claim_then_stop(*args: Any, **kwargs: Any) -> Any:
            nonlocal claims
            claims += 1
            found = await claim(*args, **kwargs)
            worker.stop()  # as a signal handler or a shutdown would, mid-claim
            return found

        store.claim = claim_then_stop  # type: ignore[method-assign]
        await asyncio.wait_for(worker.run(), 20)
    finally:
        await store.close()
    assert claims == 1


async def test_cancel_reaches_the_running_call_before_renewal(db_url: str) -> None:
    """A long LLM call (20 s) is interrupted by a cancel from another store long before the
    worker's next lease renewal (lease_ttl 60 s: renewal every 20 s)."""
    store = await Store.open(db_url)
    other = await Store.open(db_url, migrate=False)
    try:
        run_id = await store.create_run(spec("slow", [{"text": "late", "delay": 20}]), "go")
        worker = Worker(store, concurrency=2, lease_ttl=60, poll_interval=0.05)
        task = asyncio.create_task(worker.run())
        await until(lambda: llm_started(other, run_id), 30)
        started = time.monotonic()
        assert await other.cancel(run_id) == "requested"
        while (await other.get_run(run_id)).status != "cancelled":
            assert time.monotonic() - started < 15, "the cancel did not reach the run"
            await asyncio.sleep(0.02)
        worker.stop()
        await task
        events = await other.load_events(run_id)
    finally:
        await other.close()
        await store.close()
    types = [e.type for e in events]
    assert LLM_COMPLETED not in types and types[-1] == RUN_CANCELLED, types
    if not store.is_sqlite:
        assert worker.signals["control"] >= 1, "no NOTIFY reached the holder"
