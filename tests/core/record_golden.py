"""Record the runs-row projection golden fixture (tests/core/fixtures/projection_golden.json).

This was run once on the code from before `core/projection.py` existed (main at
c2ef42c, where the runner and the store set the runs-table columns by hand), to pin
down what the row looked like after every append. `test_projection.py` replays the
recorded journals through `core.projection` and compares. Re-running it on newer code
records the new behaviour, so only do that on purpose (the output must then be
reviewed as a change of the runs row, not committed blindly):

    .venv/bin/python tests/core/record_golden.py

Each scenario runs in-process on a fresh SQLite file with a real worker.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from everruns.engine.worker import Worker
from everruns.settings import Settings
from everruns.spec import parse_spec
from everruns.store import Store
from everruns.store.schema import runs

OUT = Path(
    os.environ.get(
        "EVERRUNS_GOLDEN_OUT", Path(__file__).parent / "fixtures" / "projection_golden.json"
    )
)
COLUMNS = (
    "status",
    "epoch",
    "lease_owner",
    "lease_expires_at",
    "wake_at",
    "last_seq",
    "crashes",
    "cancel_requested",
    "pause_requested",
    "steps",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "result",
    "error",
    "progress_seq",
    "claim_seq",
    "parent_id",
)

RECORD: list[dict[str, Any]] = []


async def _row(conn: Any, run_id: str) -> dict[str, Any] | None:
    row = (await conn.execute(sa.select(runs).where(runs.c.id == run_id))).first()
    if row is None:
        return None
    m = row._mapping
    out = {c: m[c] for c in COLUMNS}
    out["cancel_requested"] = bool(out["cancel_requested"])
    out["pause_requested"] = bool(out["pause_requested"])
    out["error"] = json.loads(out["error"]) if out["error"] else None
    return out


def _install_recorder() -> None:
    # The old Store had `append` as a method; the new one delegates to Journal.append.
    try:
        from everruns.store.journal import Journal as owner
    except ImportError:
        owner = Store  # type: ignore[assignment]
    original = owner.append

    async def append(self: Any, run_id: str, epoch: Any, new_events: Any, **kw: Any) -> Any:
        conn = kw.get("conn")
        if conn is None and getattr(self.db, "writer", None) is None:
            return await original(self, run_id, epoch, new_events, **kw)  # records below
        if conn is None:  # the hot path (store/writer.py) commits on its own connection
            async with self.db.engine.connect() as own:
                before = await _row(own, run_id)
            try:
                out = await original(self, run_id, epoch, new_events, **kw)
            finally:
                async with self.db.engine.connect() as own:
                    after = await _row(own, run_id)
            if after is not None and before is not None and after["last_seq"] == before["last_seq"]:
                return out  # handed to the SQLAlchemy path, recorded there
        else:
            before = await _row(conn, run_id)
            out = await original(self, run_id, epoch, new_events, **kw)
            after = await _row(conn, run_id)
        RECORD.append(
            {
                "run_id": run_id,
                "fenced": epoch is not None,
                "events": [e.to_dict() for e in out],
                "before": before,
                "after": after,
            }
        )
        return out

    owner.append = append  # type: ignore[method-assign]


def spec(name: str, responses: list[dict[str, Any]], **fields: Any) -> Any:
    return parse_spec(
        {"name": name, "model": {"provider": "scripted", "responses": responses}, **fields}
    )


async def until(store: Store, run_id: str, statuses: set[str], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (await store.get_run(run_id)).status in statuses:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{run_id} never reached {statuses}")


async def quiet(store: Store, run_id: str, status: str) -> None:
    """Wait until the run has `status` and no worker holds it."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        row = await store.get_run(run_id)
        if row.status == status and row.lease_owner is None:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{run_id} never parked as {status}")


USAGE = {"input_tokens": 7, "output_tokens": 3}
# The in-memory sleep the cancel interrupts. The fixture was recorded with 1.5 s; it is
# longer now so a loaded machine cannot finish the sleep before the cancel (no row
# column depends on it).
SLEEP = 10.0


async def scenarios(store: Store) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    notes = [{"builtin": "notes"}]
    # A tool-calling run (two parallel calls, then an answer); priced, so cost moves.
    s = spec(
        "tools",
        [
            {
                "tool_calls": [
                    {"name": "note", "arguments": {"text": "one"}},
                    {"name": "read_notes", "arguments": {}},
                ],
                "usage": USAGE,
            },
            {"text": "done", "usage": USAGE},
        ],
        tools=notes,
    )
    s = parse_spec(
        {**s.to_dict(), "model": {**s.to_dict()["model"], "pricing": {"input": 1.0, "output": 2.0}}}
    )
    rid = await store.create_run(s, "go")
    await quiet(store, rid, "completed")
    out["tool_calling"] = [rid]
    # A failed run: a retryable error once (llm.failed with backoff), then a fatal one.
    s = spec(
        "failing",
        [{"text": "never", "error": "boom", "error_class": "auth"}],
        retry={"initial_backoff": 0.0},
    )
    rid = await store.create_run(s, "go")
    await quiet(store, rid, "failed")
    out["failed"] = [rid]
    s = spec(
        "retrying",
        [
            {
                "text": "ok",
                "error": "flaky",
                "error_class": "server_error",
                "error_times": 1,
                "usage": USAGE,
            }
        ],
        retry={"initial_backoff": 0.0},
    )
    rid = await store.create_run(s, "go")
    await quiet(store, rid, "completed")
    out["retried"] = [rid]
    # Waiting for an approval, approved, completed.
    s = spec(
        "approval",
        [
            {"tool_calls": [{"name": "note", "arguments": {"text": "x"}}], "usage": USAGE},
            {"text": "approved", "usage": USAGE},
        ],
        tools=notes,
        approvals={"require_for": ["note"]},
    )
    rid = await store.create_run(s, "go")
    await quiet(store, rid, "waiting")
    call_id = next(e for e in await store.load_events(rid) if e.type == "approval.requested").data[
        "call_id"
    ]
    await store.signal(rid, "approval.granted", {"call_id": call_id})
    await quiet(store, rid, "completed")
    out["approval"] = [rid]
    # Cancelled while parked (waiting for an approval): the store's cancel path.
    rid = await store.create_run(s, "go")
    await quiet(store, rid, "waiting")
    await store.cancel(rid, "no longer needed")
    out["cancelled_parked"] = [rid]
    # Cancelled while a worker holds it (a durable sleep kept in memory): the runner's path.
    s = spec(
        "sleeper",
        [
            {"tool_calls": [{"name": "sleep", "arguments": {"seconds": SLEEP}}], "usage": USAGE},
            {"text": "late"},
        ],
        tools=[{"builtin": "sleep"}],
        retry={"durable_wait_after": 30},
    )
    rid = await store.create_run(s, "go")
    await until(store, rid, {"running"})
    deadline = time.monotonic() + 10
    while not any(e.type == "tool.waiting" for e in await store.load_events(rid)):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert await store.cancel(rid) == "requested"
    await quiet(store, rid, "cancelled")
    out["cancelled_running"] = [rid]
    # Paused while parked, resumed, approved, completed.
    s = spec(
        "pausing",
        [
            {"tool_calls": [{"name": "note", "arguments": {"text": "p"}}], "usage": USAGE},
            {"text": "resumed", "usage": USAGE},
        ],
        tools=notes,
        approvals={"require_for": ["note"]},
    )
    rid = await store.create_run(s, "go")
    await quiet(store, rid, "waiting")
    assert await store.pause(rid) == "paused"
    assert await store.resume(rid) == "queued"
    await quiet(store, rid, "waiting")
    call_id = next(e for e in await store.load_events(rid) if e.type == "approval.requested").data[
        "call_id"
    ]
    await store.signal(rid, "approval.denied", {"call_id": call_id, "reason": "no"})
    await quiet(store, rid, "completed")
    out["paused_resumed"] = [rid]
    # A user message after completion starts a new turn.
    s = spec("chat", [{"text": "first", "usage": USAGE}, {"text": "second", "usage": USAGE}])
    rid = await store.create_run(s, "hello")
    await quiet(store, rid, "completed")
    await store.signal(rid, "message.user", {"content": "again"})
    await quiet(store, rid, "completed")
    out["message_after_completion"] = [rid]
    # A fork of that run after its first turn (seq of the first run.completed).
    first_done = next(e.seq for e in await store.load_events(rid) if e.type == "run.completed")
    fork = await store.fork(rid, first_done - 1)
    await quiet(store, fork, "completed")
    out["fork"] = [fork]
    # A child run: spawn, wait for it, answer.
    s = spec(
        "parent",
        [
            {
                "tool_calls": [{"name": "spawn_agent", "arguments": {"input": "child task"}}],
                "usage": USAGE,
            },
            {"tool_calls": [{"name": "wait_agents", "arguments": {}}], "usage": USAGE},
            {"text": "parent done", "usage": USAGE},
        ],
        tools=[{"builtin": "subagents"}],
    )
    rid = await store.create_run(s, "go")
    await quiet(store, rid, "completed")
    children = [r.id for r in await store.list_runs(parent_id=rid)]
    out["child"] = [rid, *children]
    # Compaction: the context policy forces a summary before the third step.
    long = "x" * 900
    s = spec(
        "compacting",
        [
            {"tool_calls": [{"name": "note", "arguments": {"text": long}}], "usage": USAGE},
            {"tool_calls": [{"name": "note", "arguments": {"text": long}}], "usage": USAGE},
            {"text": "compacted", "usage": USAGE},
        ],
        tools=notes,
        context={"max_tokens": 400, "keep_recent": 1},
    )
    rid = await store.create_run(s, long)
    await quiet(store, rid, "completed")
    out["compaction"] = [rid]
    return out


async def main() -> dict[str, Any]:
    _install_recorder()
    with tempfile.TemporaryDirectory() as tmp:
        store = await Store.open(f"sqlite:///{tmp}/golden.db")
        worker = Worker(store, lease_ttl=5, poll_interval=0.05, settings=Settings(), max_crashes=5)
        task = asyncio.create_task(worker.run())
        try:
            named = await scenarios(store)
        finally:
            worker.stop()
            await asyncio.wait_for(task, 30)
        result: dict[str, Any] = {"scenarios": {}}
        for name, run_ids in named.items():
            result["scenarios"][name] = {
                "runs": {
                    rid: {
                        "events": [e.to_dict() for e in await store.load_events(rid)],
                        "appends": [a for a in RECORD if a["run_id"] == rid],
                    }
                    for rid in run_ids
                }
            }
        await store.close()
    return result


def write(result: dict[str, Any]) -> None:
    OUT.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(
        f"wrote {OUT} ({sum(len(s['runs']) for s in result['scenarios'].values())} runs)",
        file=sys.stderr,
    )


if __name__ == "__main__":
    write(asyncio.run(main()))
