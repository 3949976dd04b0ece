"""A zombie worker: paused (SIGSTOP) mid-tool, its lease taken over, then resumed.

A real `everruns worker` process runs a scripted agent whose tools are slow. We
freeze it while both tool calls are in flight, let its lease run out, start a
second worker that takes the run over, and only then let the first one continue.
The first worker's writes are fenced: after the takeover every event comes from
the second worker, every tool call is journaled once, and the run ends once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from everruns.core.events import TERMINAL_EVENTS, TERMINAL_STATUSES, Event, EventType
from everruns.core.state import fold
from everruns.spec import load_spec
from everruns.store import Store
from helpers import env_for, read_ledger, start_worker, stop, wait_until, write_agent

pytestmark = pytest.mark.timeout(90)

TOOL_SLEEP = 2.0  # each tool: 1 s, ledger write, 1 s
# The first worker's lease is short, so it lapses soon after the freeze; the second
# one's is longer, so a loaded machine cannot make it lose the run in turn.
FIRST_ARGS = ("--lease-ttl", "1", "--poll-interval", "0.1", "--shutdown-grace", "1")
SECOND_ARGS = ("--lease-ttl", "5", "--poll-interval", "0.1", "--shutdown-grace", "1")


def _in_transaction(db_url: str) -> bool:
    """Does any other session hold a transaction (and so possibly a lock) right now?"""
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite":
        conn = sqlite3.connect(url.database, timeout=0, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            return False
        except sqlite3.OperationalError:
            return True
        finally:
            conn.close()
    with psycopg.connect(db_url, autocommit=True) as conn:
        (count,) = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND backend_type = 'client backend' "
            "AND xact_start IS NOT NULL"
        ).fetchone()
    return bool(count)


def freeze_between_transactions(proc: subprocess.Popen[bytes], db_url: str) -> None:
    """SIGSTOP the worker at a moment it holds no database transaction.

    A process frozen inside a transaction would keep its row lock (PostgreSQL) or
    the write lock (SQLite) and block everyone; that is a different failure than
    the one under test, so retry until the freeze lands between transactions.
    """
    for _ in range(200):
        os.kill(proc.pid, signal.SIGSTOP)
        time.sleep(0.02)
        if not _in_transaction(db_url):
            return
        os.kill(proc.pid, signal.SIGCONT)
        time.sleep(0.01)
    raise AssertionError("could not freeze the worker between two transactions")


async def test_zombie_worker_is_fenced(db_url: str, tmp_path: Path) -> None:
    """The usual path: on waking up, the zombie's lease renewal finds the run gone
    and drops it; it writes nothing."""
    await zombie_scenario(db_url, tmp_path, stall_renewal=False)


async def test_zombie_append_is_fenced(pg_url: str, tmp_path: Path) -> None:
    """The backstop: the zombie's renewal is stalled (its `workers` row is locked), so
    it does not know it lost the run and reports its tool result; the append is
    fenced by the epoch and the zombie drops the run."""
    logs = await zombie_scenario(pg_url, tmp_path, stall_renewal=True)
    assert "lease lost to another worker" in logs


async def zombie_scenario(db_url: str, tmp_path: Path, *, stall_renewal: bool) -> str:
    ledger = tmp_path / "ledger.jsonl"
    env = env_for(db_url, EVERRUNS_TEST_LEDGER=str(ledger))
    agent = write_agent(
        tmp_path / "agent.yaml",
        responses=[
            {
                "tool_calls": [
                    {"name": "idem_record", "arguments": {"key": "idem", "sleep": TOOL_SLEEP}},
                    {"name": "amo_record", "arguments": {"key": "amo", "sleep": TOOL_SLEEP}},
                ]
            },
            {"text": "done"},
        ],
        tools=["ledgertools:idem_record", "ledgertools:amo_record"],
        name="zombie-agent",
    )
    store = await Store.open(db_url)
    run_id = await store.create_run(load_spec(agent), "go")
    procs: list[subprocess.Popen[bytes]] = []
    frozen: subprocess.Popen[bytes] | None = None
    blocker: psycopg.Connection | None = None
    w1_log, w2_log = tmp_path / "w1.log", tmp_path / "w2.log"

    async def events() -> list[Event]:
        return await store.load_events(run_id)

    try:
        first = start_worker(env, *FIRST_ARGS, cwd=tmp_path, log=w1_log)
        procs.append(first)

        async def both_tools_started() -> bool:
            return sum(e.type == EventType.TOOL_STARTED for e in await events()) == 2

        await wait_until(both_tools_started, timeout=20, interval=0.02, what="tools started")
        freeze_between_transactions(first, db_url)
        frozen = first
        at_freeze = await events()
        (started1,) = [e for e in at_freeze if e.type == EventType.RUN_STARTED]
        assert started1.data["epoch"] == 1
        assert at_freeze[-1].type == EventType.TOOL_STARTED
        # Frozen in the first half of the tools: no side effect happened yet.
        assert read_ledger(ledger) == []

        second = start_worker(env, *SECOND_ARGS, cwd=tmp_path, log=w2_log)
        procs.append(second)

        async def taken_over() -> bool:
            return sum(e.type == EventType.RUN_STARTED for e in await events()) == 2

        await wait_until(taken_over, timeout=20, interval=0.02, what="takeover")
        takeover_seq = next(
            e.seq
            for e in await events()
            if e.type == EventType.RUN_STARTED and e.seq > started1.seq
        )
        if stall_renewal:
            # Renewal updates the worker's heartbeat row first: hold that row's lock.
            blocker = psycopg.connect(db_url)
            row = blocker.execute(
                "SELECT id FROM workers WHERE id = %s FOR UPDATE", (started1.data["worker"],)
            ).fetchone()
            assert row is not None
        os.kill(first.pid, signal.SIGCONT)
        frozen = None

        async def zombie_side_effects() -> bool:
            return sum(x["pid"] == first.pid for x in read_ledger(ledger)) == 2

        await wait_until(zombie_side_effects, timeout=15, what="the zombie's tool side effects")
        if stall_renewal:

            async def zombie_fenced() -> bool:
                return "lease lost to another worker" in w1_log.read_text()

            await wait_until(zombie_fenced, timeout=15, what="the zombie's fenced append")
            assert blocker is not None
            blocker.rollback()
        else:
            await asyncio.sleep(TOOL_SLEEP / 2 + 0.5)  # its tools return; it would report

        async def finished() -> bool:
            return (await store.get_run(run_id)).status in TERMINAL_STATUSES

        await wait_until(finished, timeout=30, interval=0.05, what="run end")
        await asyncio.sleep(0.5)
        final = await events()
        assert first.poll() is None, "the resumed worker died instead of dropping the run"
    finally:
        if frozen is not None:
            os.kill(frozen.pid, signal.SIGCONT)
        if blocker is not None:
            blocker.close()
        codes = [stop(p) for p in procs]
        await store.close()

    logs = w1_log.read_text() + "\n" + w2_log.read_text()
    assert codes == [0, 0], logs
    assert "Traceback" not in logs, logs
    assert "never retrieved" not in logs, logs

    # The journal: gap-free, two holders, the second one took over.
    assert [e.seq for e in final] == list(range(1, len(final) + 1))
    assert final[: len(at_freeze)] == at_freeze
    assert [e.seq for e in final if e.type == EventType.RUN_STARTED] == [started1.seq, takeover_seq]
    takeover = final[takeover_seq - 1]
    assert takeover.data["epoch"] == 2 and takeover.data["takeover"] is True
    assert takeover.data["worker"] != started1.data["worker"]
    assert takeover_seq == len(at_freeze) + 1, "the frozen worker wrote while its lease lapsed"

    # After the takeover: exactly the second worker's work, nothing from the zombie.
    after = final[takeover_seq:]
    by_type = Counter(e.type for e in after)
    assert by_type == {
        EventType.TOOL_STARTED: 1,
        EventType.TOOL_COMPLETED: 1,
        EventType.TOOL_FAILED: 1,
        EventType.LLM_STARTED: 1,
        EventType.LLM_COMPLETED: 1,
        EventType.RUN_COMPLETED: 1,
    }, [(e.seq, e.type, e.data) for e in after]
    idem_start = next(e for e in after if e.type == EventType.TOOL_STARTED)
    assert idem_start.data["name"] == "idem_record" and idem_start.data["attempt"] == 2
    amo_fail = next(e for e in after if e.type == EventType.TOOL_FAILED)
    assert amo_fail.data["name"] == "amo_record" and amo_fail.data["interrupted"] is True
    assert final[-1].type == EventType.RUN_COMPLETED and final[-1].data["result"] == "done"

    # Each tool call resolved exactly once in the whole journal.
    terminal_per_call = Counter(
        e.data["call_id"]
        for e in final
        if e.type in (EventType.TOOL_COMPLETED, EventType.TOOL_FAILED)
    )
    assert terminal_per_call == {"call_1_1": 1, "call_1_2": 1}
    assert sum(e.type == EventType.RUN_COMPLETED for e in final) == 1
    assert sum(e.type in TERMINAL_EVENTS for e in final) == 1

    state = fold(final)
    assert state.status == "completed" and state.result == "done"
    async with await Store.open(db_url, migrate=False) as check:
        row = await check.get_run(run_id)
    assert row.status == "completed" and row.result == "done"
    assert row.epoch == 2 and row.lease_owner is None
    assert row.last_seq == len(final)

    # Side effects: the idempotent tool ran in both workers under one key (that is
    # what idempotent allows); the at-most-once tool ran only in the zombie.
    entries = read_ledger(ledger)
    idem = [x for x in entries if x["tool"] == "idem_record"]
    amo = [x for x in entries if x["tool"] == "amo_record"]
    assert {x["idempotency_key"] for x in idem} == {f"{run_id}:call_1_1"}
    assert sorted((x["attempt"], x["pid"]) for x in idem) == [(1, first.pid), (2, second.pid)]
    assert [(x["attempt"], x["pid"]) for x in amo] == [(1, first.pid)]
    return logs
