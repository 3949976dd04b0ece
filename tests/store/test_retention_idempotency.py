"""Retention (explicit, off by default) and idempotency keys in the store, on both databases."""

from __future__ import annotations

import time

import sqlalchemy as sa

from everruns.core.events import EventType
from everruns.spec import parse_spec
from everruns.store import Store
from everruns.store.idempotency import TTL, Busy, Claimed, Mismatch, Replay
from everruns.store.retention import cutoff
from everruns.store.schema import idempotency_keys

SPEC = parse_spec({"name": "kept", "model": {"provider": "scripted", "responses": [{"text": "x"}]}})


async def _finished_run(store: Store) -> str:
    run_id = await store.create_run(SPEC, "hello")
    await store.append(run_id, None, [(EventType.MESSAGE_USER, {"content": "more"})])
    await store.cancel(run_id)
    return run_id


async def test_retention_prunes_only_what_the_policy_says(store: Store) -> None:
    old, active = await _finished_run(store), await store.create_run(SPEC, "still going")
    assert await store.retention.prune(cutoff(90), ["completed", "failed", "cancelled"]) == {
        "runs": 0,
        "events": 0,
    }  # a run finished a moment ago is kept
    pruned = await store.retention.prune(time.time() + 1, ["cancelled"])
    assert pruned == {"runs": 1, "events": 1}
    events = await store.load_events(old)
    assert [e.type for e in events] == ["run.created", "run.cancelled"]  # the summary stays
    row = await store.get_run(old)
    assert (row.status, row.last_seq, row.input) == ("cancelled", 3, "hello")
    assert [e.type for e in await store.load_events(active)] == ["run.created"]
    assert await store.retention.prune(time.time() + 1, ["cancelled"]) == {"runs": 0, "events": 0}


async def test_idempotency_claims_replays_and_expiry(store: Store) -> None:
    keys = store.idempotency
    assert await keys.begin("me", "k", "fp1") == Claimed()
    assert await keys.begin("me", "k", "fp1") == Busy()  # the first is still running
    assert await keys.begin("me", "k", "fp2") == Mismatch()
    assert await keys.begin("you", "k", "fp2") == Claimed()  # scoped by caller
    await keys.finish("me", "k", 201, '{"id": 1}', "application/json")
    assert await keys.begin("me", "k", "fp1") == Replay(201, '{"id": 1}', "application/json")
    await keys.abandon("you", "k")  # a 5xx: the retry executes again
    assert await keys.begin("you", "k", "fp2") == Claimed()
    async with store.engine.begin() as conn:  # a day later
        await conn.execute(
            sa.update(idempotency_keys).values(expires_at=time.time() - 1, created_at=0.0)
        )
    assert await keys.begin("me", "k", "fp9") == Claimed()  # expired: a new request
    assert await keys.purge(time.time() + TTL + 1) == 2
