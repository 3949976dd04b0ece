"""A fleet on PostgreSQL: three worker processes share 100 runs.

Every run must be executed by exactly one worker, exactly once: one run.started,
one run.completed, a gap-free journal, and each tool call's side effect recorded
exactly once in the ledger, by the worker process that held the run's lease.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa

from everruns.core.events import TERMINAL_STATUSES, EventType
from everruns.core.state import fold
from everruns.spec import load_spec
from everruns.store import Store
from everruns.store.schema import runs, workers
from helpers import env_for, read_ledger, start_worker, stop, wait_until, write_agent

pytestmark = pytest.mark.timeout(90)

RUNS = 100
WORKERS = 3
WORKER_ARGS = ("--lease-ttl", "10", "--poll-interval", "0.1", "--concurrency", "8")
# Renewal-race test: renewals every RACE_LEASE / 3 s while a run arrives every RACE_GAP s.
RACE_LEASE = 2.0
RACE_RUNS = 80
RACE_GAP = 0.02


def _pid_of(worker_id: str) -> int:
    # Worker ids are "<hostname>-<pid>-<random>"; hostnames may contain dashes.
    return int(worker_id.rsplit("-", 2)[1])


async def test_three_workers_hundred_runs(pg_url: str, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.jsonl"
    env = env_for(pg_url, EVERRUNS_TEST_LEDGER=str(ledger))
    one_step = load_spec(
        write_agent(
            tmp_path / "one.yaml",
            responses=[
                {"tool_calls": [{"name": "idem_record", "arguments": {"key": "a"}}]},
                {"text": "one done"},
            ],
            tools=["ledgertools:idem_record"],
            name="one-step",
        )
    )
    two_step = load_spec(
        write_agent(
            tmp_path / "two.yaml",
            responses=[
                {"tool_calls": [{"name": "idem_record", "arguments": {"key": "a"}}]},
                {"tool_calls": [{"name": "amo_record", "arguments": {"key": "b"}}]},
                {"text": "two done"},
            ],
            tools=["ledgertools:idem_record", "ledgertools:amo_record"],
            name="two-step",
        )
    )

    store = await Store.open(pg_url)
    procs: list[subprocess.Popen[bytes]] = []
    expected: dict[str, str] = {}

    async def create(indexes: range) -> None:
        for i in indexes:
            spec = one_step if i % 2 else two_step
            expected[await store.create_run(spec, f"run {i}")] = spec.name

    try:
        # Half the runs wait in the queue (the workers start into a backlog and
        # race for it); the other half arrive while the workers are polling.
        began = time.monotonic()
        await create(range(RUNS // 2))
        for i in range(WORKERS):
            procs.append(start_worker(env, *WORKER_ARGS, cwd=tmp_path, log=tmp_path / f"w{i}.log"))

        async def all_registered() -> bool:
            async with store.engine.connect() as conn:
                count = (
                    await conn.execute(sa.select(sa.func.count()).select_from(workers))
                ).scalar_one()
            return count == WORKERS

        await wait_until(all_registered, timeout=30, interval=0.02, what="workers registered")

        await create(range(RUNS // 2, RUNS))

        async def all_done() -> bool:
            async with store.engine.connect() as conn:
                left = (
                    await conn.execute(
                        sa.select(sa.func.count())
                        .select_from(runs)
                        .where(runs.c.status.not_in(tuple(TERMINAL_STATUSES)))
                    )
                ).scalar_one()
            return left == 0

        await wait_until(all_done, timeout=60, interval=0.2, what="all runs terminal")
        elapsed = time.monotonic() - began
        await asyncio.sleep(0.3)  # anything a worker might still (wrongly) write lands now
        journals = {run_id: await store.load_events(run_id) for run_id in expected}
        rows = {run_id: await store.get_run(run_id) for run_id in expected}
        alive = [p.poll() is None for p in procs]
    finally:
        codes = [stop(p) for p in procs]
        await store.close()

    logs = "\n".join((tmp_path / f"w{i}.log").read_text() for i in range(WORKERS))
    assert all(alive), logs
    assert codes == [0] * WORKERS, logs
    assert "Traceback" not in logs and "ERROR" not in logs, logs
    print(f"{RUNS} runs on {WORKERS} workers in {elapsed:.1f}s")

    holder: dict[str, str] = {}
    for run_id, events in journals.items():
        agent = expected[run_id]
        steps = 1 if agent == "one-step" else 2
        types = [e.type for e in events]
        assert [e.seq for e in events] == list(range(1, len(events) + 1)), run_id
        assert rows[run_id].last_seq == len(events)
        assert types.count(EventType.RUN_STARTED) == 1, (
            run_id,
            types,
        )  # no double claim, no takeover
        assert types.count(EventType.RUN_COMPLETED) == 1 and types[-1] == EventType.RUN_COMPLETED, (
            run_id,
            types,
        )
        assert types.count(EventType.LLM_COMPLETED) == steps + 1
        assert types.count(EventType.TOOL_STARTED) == types.count(EventType.TOOL_COMPLETED) == steps
        assert EventType.TOOL_FAILED not in types and EventType.LLM_FAILED not in types
        started = next(e for e in events if e.type == EventType.RUN_STARTED)
        assert started.data["epoch"] == 1 and started.data["takeover"] is False
        holder[run_id] = started.data["worker"]
        result = "one done" if agent == "one-step" else "two done"
        assert events[-1].data["result"] == result
        row = rows[run_id]
        assert (row.status, row.result, row.epoch, row.lease_owner) == (
            "completed",
            result,
            1,
            None,
        )
        assert row.steps == steps + 1
        state = fold(events)
        assert state.status == "completed" and state.steps == steps + 1

    # The fleet shared the work.
    per_worker = Counter(holder.values())
    print("runs per worker:", dict(per_worker))
    assert len(per_worker) >= 2, per_worker
    assert {_pid_of(w) for w in per_worker} <= {p.pid for p in procs}

    # Side effects: every tool call exactly once, in the process holding the run.
    entries = read_ledger(ledger)
    keys = Counter(x["idempotency_key"] for x in entries)
    want = {f"{r}:call_1_1" for r in expected} | {
        f"{r}:call_2_1" for r, agent in expected.items() if agent == "two-step"
    }
    assert set(keys) == want
    assert all(n == 1 for n in keys.values()), [k for k, n in keys.items() if n > 1]
    assert len(entries) == len(want) == RUNS + RUNS // 2
    for x in entries:
        run_id = x["idempotency_key"].split(":")[0]
        assert x["pid"] == _pid_of(holder[run_id])
        assert x["attempt"] == 1
        assert x["tool"] == ("idem_record" if x["call_id"] == "call_1_1" else "amo_record")


async def test_runs_claimed_during_renewal_are_kept(pg_url: str, tmp_path: Path) -> None:
    """Short leases (frequent renewals) and a steady trickle of new runs, so claims
    often complete while a renewal is in flight. A run claimed then is not in that
    renewal's answer; it must not be taken for lost (dropped silently, then claimed
    again at epoch 2 once its lease ran out)."""
    ledger = tmp_path / "ledger.jsonl"
    env = env_for(pg_url, EVERRUNS_TEST_LEDGER=str(ledger))
    spec = load_spec(
        write_agent(
            tmp_path / "agent.yaml",
            responses=[
                {"tool_calls": [{"name": "idem_record", "arguments": {"key": "a", "sleep": 0.3}}]},
                {"text": "ok"},
            ],
            tools=["ledgertools:idem_record"],
            name="trickle",
        )
    )
    args = ("--lease-ttl", str(RACE_LEASE), "--poll-interval", "0.01", "--concurrency", "50")
    store = await Store.open(pg_url)
    procs: list[subprocess.Popen[bytes]] = []
    run_ids: list[str] = []
    try:
        for i in range(2):
            procs.append(start_worker(env, *args, cwd=tmp_path, log=tmp_path / f"w{i}.log"))

        async def registered() -> bool:
            async with store.engine.connect() as conn:
                n = (
                    await conn.execute(sa.select(sa.func.count()).select_from(workers))
                ).scalar_one()
            return n == 2

        await wait_until(registered, timeout=30, interval=0.02, what="workers registered")
        for i in range(RACE_RUNS):
            run_ids.append(await store.create_run(spec, f"r{i}"))
            await asyncio.sleep(RACE_GAP)

        async def done() -> bool:
            async with store.engine.connect() as conn:
                left = (
                    await conn.execute(
                        sa.select(sa.func.count())
                        .select_from(runs)
                        .where(runs.c.status.not_in(tuple(TERMINAL_STATUSES)))
                    )
                ).scalar_one()
            return left == 0

        await wait_until(done, timeout=45, interval=0.1, what="all runs terminal")
        rows = [await store.get_run(r) for r in run_ids]
        journals = [await store.load_events(r) for r in run_ids]
    finally:
        codes = [stop(p) for p in procs]
        await store.close()

    logs = "\n".join((tmp_path / f"w{i}.log").read_text() for i in range(2))
    assert codes == [0, 0], logs
    reclaimed = [r.id for r in rows if r.epoch != 1]
    assert not reclaimed, f"{len(reclaimed)} runs were dropped by their worker and claimed again"
    for events in journals:
        types = [e.type for e in events]
        assert types.count(EventType.RUN_STARTED) == 1 and types.count(EventType.RUN_COMPLETED) == 1
    keys = Counter(x["idempotency_key"] for x in read_ledger(ledger))
    assert sorted(keys) == sorted(f"{r}:call_1_1" for r in run_ids)
    assert set(keys.values()) == {1}
