"""Store conformance: the same contract on SQLite and PostgreSQL.

Every test takes `db_url`, so it runs once on a fresh SQLite file and once on a
fresh PostgreSQL database, against the real `Store` API (no mocks). These are
the guarantees the engine is built on: a run is leased to one worker at a time,
a stale epoch can never write, seq is gap-free, and runs wake in order.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from everruns.core.events import EventType
from everruns.core.state import fold
from everruns.spec import AgentSpec, parse_spec
from everruns.store import Claim, Fenced, RunNotFound, Store
from everruns.store.schema import runs, workers

LONG = 60.0  # a lease that does not expire during a test


def make_spec(name: str = "conf-agent", text: str = "done", **fields: Any) -> AgentSpec:
    return parse_spec(
        {"name": name, "model": {"provider": "scripted", "responses": [{"text": text}]}, **fields}
    )


async def create_runs(store: Store, n: int, spec: AgentSpec | None = None) -> list[str]:
    spec = spec or make_spec()
    return [await store.create_run(spec, f"input {i}") for i in range(n)]


async def seqs(store: Store, run_id: str) -> list[int]:
    return [e.seq for e in await store.load_events(run_id)]


async def start(store: Store, claim: Claim) -> int:
    """What a runner does after claiming: journal run.started (which records claim_seq)."""
    (event,) = await store.append(
        claim.run_id, claim.epoch, [(EventType.RUN_STARTED, {"epoch": claim.epoch})]
    )
    return event.seq


# ---------------------------------------------------------------- claim exclusivity


async def test_claim_exclusive_under_contention(db_url: str) -> None:
    """8 claimers, each with its own engine, race for 40 runs: each run is leased once."""
    setup = await Store.open(db_url)
    try:
        run_ids = await create_runs(setup, 40)
    finally:
        await setup.close()

    claimers = [await Store.open(db_url, migrate=False) for _ in range(8)]
    go = asyncio.Event()

    async def claimer(index: int, store: Store) -> list[Claim]:
        got: list[Claim] = []
        await go.wait()
        while True:
            batch = await store.claim(f"w{index}", limit=1 + index % 3, lease_ttl=LONG)
            if not batch:
                return got
            got.extend(batch)
            await asyncio.sleep(0)

    try:
        tasks = [asyncio.create_task(claimer(i, s)) for i, s in enumerate(claimers)]
        await asyncio.sleep(0.05)
        go.set()
        results = await asyncio.wait_for(asyncio.gather(*tasks), 60)
        # Anything left over would mean a claimer gave up while runs were still free.
        leftovers = await claimers[0].claim("late", limit=100, lease_ttl=LONG)
    finally:
        for s in claimers:
            await s.close()

    assert leftovers == []
    claimed = [(c.run_id, f"w{i}") for i, batch in enumerate(results) for c in batch]
    ids = [run_id for run_id, _ in claimed]
    assert len(ids) == len(set(ids)), "a run was claimed by two workers"
    assert sorted(ids) == sorted(run_ids)
    assert sum(1 for batch in results if batch) >= 2, "no contention happened"
    for batch in results:
        for claim in batch:
            assert claim.epoch == 1
            assert claim.crashes == 0
            assert claim.agent_name == "conf-agent" and claim.agent_version == 1
            assert claim.cancel_requested is False

    async with await Store.open(db_url, migrate=False) as check:
        owners = dict(claimed)
        for run_id in run_ids:
            row = await check.get_run(run_id)
            assert row.lease_owner == owners[run_id]
            assert row.epoch == 1
            assert row.status == "running"


_CLAIM_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, os, sys, time
    from everruns.store import Store

    async def main(url, name, go_file):
        store = await Store.open(url, migrate=False)
        try:
            print("ready", flush=True)
            while not os.path.exists(go_file):
                await asyncio.sleep(0.005)
            got = []
            while True:
                batch = await store.claim(name, limit=2, lease_ttl=60)
                if not batch:
                    break
                got.extend([c.run_id, c.epoch] for c in batch)
            print(json.dumps(got), flush=True)
        finally:
            await store.close()

    asyncio.run(main(*sys.argv[1:4]))
    """
)


def _spawn_claimer(db_url: str, name: str, go_file: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _CLAIM_SCRIPT, db_url, name, str(go_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def test_claim_exclusive_across_processes(db_url: str, tmp_path: Path) -> None:
    """The same race between separate OS processes (separate connections, no shared pool)."""
    async with await Store.open(db_url) as store:
        run_ids = await create_runs(store, 60)
    go_file = tmp_path / "go"
    procs = [_spawn_claimer(db_url, f"p{i}", go_file) for i in range(3)]
    try:
        for p in procs:
            assert p.stdout is not None
            line = await asyncio.to_thread(p.stdout.readline)
            assert line.strip() == "ready", p.stderr.read() if p.stderr else ""
        go_file.touch()
        outputs = []
        for p in procs:
            out, err = await asyncio.to_thread(p.communicate, timeout=60)
            assert p.returncode == 0, err
            outputs.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    ids = [run_id for got in outputs for run_id, _ in got]
    assert len(ids) == len(set(ids)), "a run was claimed by two processes"
    assert sorted(ids) == sorted(run_ids)
    assert all(epoch == 1 for got in outputs for _, epoch in got)
    async with await Store.open(db_url, migrate=False) as store:
        for i, got in enumerate(outputs):
            for run_id, _ in got:
                assert (await store.get_run(run_id)).lease_owner == f"p{i}"


# ---------------------------------------------------------------- leases


async def test_lease_expiry_and_takeover(db_url: str) -> None:
    s1 = await Store.open(db_url)
    s2 = await Store.open(db_url, migrate=False)
    try:
        (run_id,) = await create_runs(s1, 1)
        t0 = time.time()
        (c1,) = await s1.claim("w1", limit=5, lease_ttl=0.5)
        # While the lease is live nobody else gets the run.
        assert await s2.claim("w2", limit=5, lease_ttl=0.5) == []
        assert (c1.run_id, c1.epoch, c1.crashes) == (run_id, 1, 0)
        row = await s1.get_run(run_id)
        assert row.lease_owner == "w1" and row.status == "running"
        assert row.lease_expires_at is not None
        assert t0 + 0.5 <= row.lease_expires_at <= time.time() + 0.5
        # w1 made progress (an event after its run.started), then died.
        await start(s1, c1)
        await s1.append(run_id, c1.epoch, [(EventType.LLM_STARTED, {"attempt": 1})])
        await asyncio.sleep(0.6)

        # From here on the claimers' clocks are passed in (and run ahead instead of the
        # test sleeping), so a slow machine cannot let a lease run out early.
        t = time.time()
        (c2,) = await s2.claim("w2", limit=5, lease_ttl=0.5, now=t)
        assert c2.run_id == run_id
        assert c2.epoch == c1.epoch + 1
        assert c2.crashes == 1, "a holder that made progress and died counts as one crash"
        assert (await s2.get_run(run_id)).lease_owner == "w2"
        assert await s1.claim("w1", limit=5, lease_ttl=0.5, now=t) == []

        # w2 only journals run.started (no progress), then dies: the count grows.
        await start(s2, c2)
        assert await s1.claim("w3", limit=5, lease_ttl=0.5, now=t + 0.4) == []
        (c3,) = await s1.claim("w3", limit=5, lease_ttl=0.5, now=t + 1)
        assert (c3.epoch, c3.crashes) == (3, 2)

        # w3 dies before writing anything at all.
        (c4,) = await s2.claim("w4", limit=5, lease_ttl=0.5, now=t + 2)
        assert (c4.epoch, c4.crashes) == (4, 3)

        # A clean release resets the count for the next holder.
        assert await s2.release(run_id, c4.epoch, wake_at=time.time(), status="queued")
        row = await s2.get_run(run_id)
        assert row.lease_owner is None and row.lease_expires_at is None
        assert row.status == "queued" and row.crashes == 3
        (c5,) = await s1.claim("w5", limit=5, lease_ttl=LONG)
        assert (c5.epoch, c5.crashes) == (5, 0)
    finally:
        await s1.close()
        await s2.close()


async def test_claim_respects_limit_and_only(db_url: str) -> None:
    async with await Store.open(db_url) as store:
        run_ids = await create_runs(store, 5)
        assert await store.claim("w", limit=0, lease_ttl=LONG) == []
        only = [run_ids[3], run_ids[1]]
        got = await store.claim("w", limit=10, lease_ttl=LONG, only=only)
        assert sorted(c.run_id for c in got) == sorted(only)
        got = await store.claim("w", limit=2, lease_ttl=LONG)
        assert len(got) == 2
        got += await store.claim("w", limit=2, lease_ttl=LONG)
        assert sorted(c.run_id for c in got) == sorted([run_ids[0], run_ids[2], run_ids[4]])
        assert await store.claim("w", limit=10, lease_ttl=LONG, only=[]) == []


# ---------------------------------------------------------------- fencing


async def test_stale_epoch_is_fenced(db_url: str) -> None:
    s1 = await Store.open(db_url)
    s2 = await Store.open(db_url, migrate=False)
    try:
        (run_id,) = await create_runs(s1, 1)
        (c1,) = await s1.claim("w1", limit=1, lease_ttl=0.3)
        await start(s1, c1)
        await s1.append(run_id, c1.epoch, [(EventType.LLM_STARTED, {"attempt": 1})])
        await asyncio.sleep(0.4)
        (c2,) = await s2.claim("w2", limit=1, lease_ttl=LONG)
        assert c2.epoch == c1.epoch + 1

        before = await s1.load_events(run_id)
        row_before = await s1.get_run(run_id)
        with pytest.raises(Fenced):
            await s1.append(
                run_id,
                c1.epoch,
                [
                    (
                        EventType.LLM_COMPLETED,
                        {"message": {"role": "assistant", "content": "stale"}},
                    ),
                    (EventType.RUN_COMPLETED, {"result": "stale"}),
                ],
            )
        # An empty append is fenced too.
        with pytest.raises(Fenced):
            await s1.append(run_id, c1.epoch, [])
        assert await s1.load_events(run_id) == before
        row = await s1.get_run(run_id)
        assert row.last_seq == row_before.last_seq == before[-1].seq
        assert (row.status, row.result, row.steps) == ("running", None, 0)
        assert row.epoch == c2.epoch and row.lease_owner == "w2"

        # A stale release changes nothing.
        assert await s1.release(run_id, c1.epoch, wake_at=time.time(), status="queued") is False
        row = await s1.get_run(run_id)
        assert row.lease_owner == "w2" and row.status == "running"

        # The current holder writes on, right after the last seq.
        (event,) = await s2.append(run_id, c2.epoch, [(EventType.RUN_STARTED, {"epoch": c2.epoch})])
        assert event.seq == before[-1].seq + 1
        assert await seqs(s2, run_id) == list(range(1, event.seq + 1))
        assert await s2.release(run_id, c2.epoch, wake_at=None, status="waiting") is True

        with pytest.raises(RunNotFound):
            await s1.append("run_missing", 1, [(EventType.LLM_STARTED, {})])
        with pytest.raises(RunNotFound):
            await s1.append("run_missing", None, [(EventType.MESSAGE_USER, {"content": "x"})])
    finally:
        await s1.close()
        await s2.close()


async def test_fencing_races_takeover(db_url: str) -> None:
    """A holder appending in a tight loop while another worker takes over: every
    acknowledged stale write precedes the takeover, and nothing after it is stale."""
    s1 = await Store.open(db_url)
    s2 = await Store.open(db_url, migrate=False)
    try:
        (run_id,) = await create_runs(s1, 1)
        (c1,) = await s1.claim("w1", limit=1, lease_ttl=0.3)
        acked: list[int] = []
        fenced = asyncio.Event()

        async def old_holder() -> None:
            i = 0
            while True:
                try:
                    (event,) = await s1.append(
                        run_id, c1.epoch, [(EventType.LLM_STARTED, {"epoch": c1.epoch, "i": i})]
                    )
                except Fenced:
                    fenced.set()
                    return
                acked.append(event.seq)
                i += 1

        async def new_holder() -> Claim:
            while True:
                got = await s2.claim("w2", limit=1, lease_ttl=LONG)
                if got:
                    (claim,) = got
                    for i in range(5):
                        await s2.append(
                            run_id,
                            claim.epoch,
                            [(EventType.LLM_STARTED, {"epoch": claim.epoch, "i": i})],
                        )
                    return claim
                await asyncio.sleep(0.02)

        _, c2 = await asyncio.wait_for(asyncio.gather(old_holder(), new_holder()), 30)
        assert fenced.is_set()
        assert c2.epoch == c1.epoch + 1
        assert acked, "the first holder never wrote"

        events = await s1.load_events(run_id)
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        stale = [e.seq for e in events if e.data.get("epoch") == c1.epoch]
        fresh = [e.seq for e in events if e.data.get("epoch") == c2.epoch]
        assert stale == acked, "journal and acknowledged appends disagree"
        assert len(fresh) == 5
        assert max(stale) < min(fresh), "a stale write landed after the takeover"
    finally:
        await s1.close()
        await s2.close()


# ---------------------------------------------------------------- seq


async def test_seq_gap_free_under_concurrent_appends(db_url: str) -> None:
    stores = [await Store.open(db_url)] + [
        await Store.open(db_url, migrate=False) for _ in range(3)
    ]
    try:
        (run_id,) = await create_runs(stores[0], 1)
        (claim,) = await stores[0].claim("w", limit=1, lease_ttl=LONG)
        returned: dict[int, tuple[str, int, int]] = {}

        async def writer(name: str, store: Store, epoch: int | None, batches: int) -> None:
            for b in range(batches):
                size = 1 + b % 3
                out = await store.append(
                    run_id,
                    epoch,
                    [
                        (
                            EventType.MESSAGE_USER,
                            {"content": f"{name}/{b}/{k}", "w": name, "b": b, "k": k},
                        )
                        for k in range(size)
                    ],
                )
                assert [e.seq for e in out] == list(range(out[0].seq, out[0].seq + size))
                for k, e in enumerate(out):
                    assert e.seq not in returned, f"seq {e.seq} handed out twice"
                    returned[e.seq] = (name, b, k)

        tasks = []
        for i, store in enumerate(stores):
            tasks.append(writer(f"u{i}a", store, None, 12))
            tasks.append(writer(f"u{i}b", store, None, 12))
            tasks.append(writer(f"f{i}", store, claim.epoch, 12))
        await asyncio.wait_for(asyncio.gather(*tasks), 90)

        per_writer = sum(1 + b % 3 for b in range(12))
        total = 1 + per_writer * len(tasks)
        events = await stores[1].load_events(run_id)
        assert [e.seq for e in events] == list(range(1, total + 1))
        assert (await stores[2].get_run(run_id)).last_seq == total
        for e in events[1:]:
            assert returned[e.seq] == (e.data["w"], e.data["b"], e.data["k"])
        # Within one writer, batches land in the order they were written.
        for name in {v[0] for v in returned.values()}:
            mine = [(e.data["b"], e.data["k"]) for e in events[1:] if e.data["w"] == name]
            assert mine == sorted(mine)
    finally:
        for s in stores:
            await s.close()


# ---------------------------------------------------------------- wake_at


async def test_wake_at_ordering(db_url: str) -> None:
    async with await Store.open(db_url) as store:
        now = time.time()
        ids = await create_runs(store, 6)
        offsets = {ids[0]: -10.0, ids[1]: -50.0, ids[2]: -30.0, ids[3]: -20.0}
        for run_id, offset in offsets.items():
            assert await store.release(run_id, 0, wake_at=now + offset, status="queued")
        future, parked = ids[4], ids[5]
        assert await store.release(future, 0, wake_at=now + 3600, status="waiting")
        assert await store.release(parked, 0, wake_at=None, status="waiting")
        # A finished run with a wake time in the past is never claimed either.
        done = (await create_runs(store, 1))[0]
        await store.append(done, 0, [(EventType.RUN_COMPLETED, {"result": "x"})])
        async with store.engine.begin() as conn:  # a stale wake time left behind
            await conn.execute(sa.update(runs).where(runs.c.id == done).values(wake_at=now - 100))

        order = []
        while got := await store.claim("w", limit=1, lease_ttl=LONG, now=now):
            order.extend(c.run_id for c in got)
        assert order == sorted(offsets, key=offsets.get)

        # The future run wakes when its time comes; the parked one never does.
        # (The clock is moved forward; `only` keeps the runs leased above out of it.)
        later = [future, parked]
        assert await store.claim("w", limit=10, lease_ttl=LONG, now=now + 3599, only=later) == []
        got = await store.claim("w", limit=10, lease_ttl=LONG, now=now + 3601, only=later)
        assert [c.run_id for c in got] == [future]
        assert (
            await store.claim("w", limit=10, lease_ttl=LONG, now=now + 10**7, only=[parked]) == []
        )

        # A signal gives the parked run a wake time: then it is claimable.
        assert await store.release(parked, 0, wake_at=time.time(), status="queued")
        got = await store.claim("w", limit=10, lease_ttl=LONG)
        assert [c.run_id for c in got] == [parked]
        assert (await store.get_run(done)).status == "completed"


async def test_waiting_run_released_is_claimable_in_order(db_url: str) -> None:
    """Runs released by their holders (waiting with wake times) come back by wake_at."""
    async with await Store.open(db_url) as store:
        ids = await create_runs(store, 3)
        claims = {c.run_id: c for c in await store.claim("w1", limit=3, lease_ttl=LONG)}
        now = time.time()
        wake = {ids[0]: now + 0.6, ids[1]: now + 0.2, ids[2]: now + 0.4}
        for run_id, at in wake.items():
            assert await store.release(run_id, claims[run_id].epoch, wake_at=at, status="waiting")
        assert await store.claim("w2", limit=3, lease_ttl=LONG, now=now) == []
        order: list[str] = []
        deadline = time.monotonic() + 10
        while len(order) < 3 and time.monotonic() < deadline:
            # limit=1: the order is the claim order, whatever RETURNING's row order.
            order.extend(c.run_id for c in await store.claim("w2", limit=1, lease_ttl=LONG))
            await asyncio.sleep(0.05)
        assert order == [ids[1], ids[2], ids[0]]
        for run_id in ids:
            row = await store.get_run(run_id)
            assert row.epoch == 2 and row.crashes == 0 and row.lease_owner == "w2"


async def test_a_signal_racing_a_park_is_never_slept_through(db_url: str) -> None:
    """The lost-wakeup race: a signal (an approval, a message) arrives while its run's
    holder is parking it. Here the holder's park (lease given up, status waiting, no wake
    time) commits while the signal's transaction is already under way; the signal must
    still wake the run, not read it as "leased, the holder will see it"."""
    async with await Store.open(db_url) as store, await Store.open(db_url) as holder:
        (run_id,) = await create_runs(store, 1)
        (claim,) = await store.claim("w1", limit=1, lease_ttl=LONG)
        await start(store, claim)
        async with holder.db.engine.begin() as conn:  # the holder's park, in progress
            await conn.execute(sa.select(runs).where(runs.c.id == run_id).with_for_update())
            signal = asyncio.create_task(
                store.signal(run_id, EventType.MESSAGE_USER, {"content": "go on"})
            )
            await asyncio.sleep(0.5)  # the signal's transaction is waiting on the row now
            assert not signal.done()
            await conn.execute(
                sa.update(runs)
                .where(runs.c.id == run_id)
                .values(lease_owner=None, lease_expires_at=None, status="waiting", wake_at=None)
            )
        await asyncio.wait_for(signal, 30)
        row = await store.get_run(run_id)
        assert row.lease_owner is None and row.wake_at is not None  # woken, not slept through
        claims = await store.claim("w2", limit=1, lease_ttl=LONG)
        assert [c.run_id for c in claims] == [run_id]


# ---------------------------------------------------------------- renew


async def test_renew(db_url: str) -> None:
    s1 = await Store.open(db_url)
    s2 = await Store.open(db_url, migrate=False)
    try:
        await s1.register_worker("w1")
        a, b, c, d, e = await create_runs(s1, 5)
        claims = {
            x.run_id: x for x in await s1.claim("w1", limit=4, lease_ttl=2, only=[a, b, c, e])
        }
        assert set(claims) == {a, b, c, e}

        # c is taken over (its holder looked dead to w2's clock), b gets a cancel
        # request, e is released by w1 itself, d was never w1's.
        (taken,) = await s2.claim("w2", limit=5, lease_ttl=LONG, only=[c], now=time.time() + 5)
        assert taken.run_id == c
        assert await s2.cancel(b) == "requested"
        assert await s1.release(e, claims[e].epoch, wake_at=None, status="waiting")

        before = time.time()
        held = await s1.renew("w1", [a, b, c, d, e], lease_ttl=30)
        assert held == {a: False, b: True}
        for run_id in (a, b):
            row = await s1.get_run(run_id)
            assert row.lease_owner == "w1"
            assert row.lease_expires_at is not None and row.lease_expires_at >= before + 29
        assert (await s1.get_run(c)).lease_owner == "w2"
        assert (await s1.get_run(e)).lease_owner is None

        # The renewed leases outlive the original 2 s.
        later = time.time() + 5
        assert await s2.claim("w2", limit=5, lease_ttl=LONG, only=[a, b], now=later) == []

        # An empty renewal is a heartbeat.
        async with s1.engine.connect() as conn:
            hb1 = (
                await conn.execute(sa.select(workers.c.heartbeat_at).where(workers.c.id == "w1"))
            ).scalar_one()
        assert await s1.renew("w1", [], lease_ttl=30) == {}
        async with s1.engine.connect() as conn:
            hb2 = (
                await conn.execute(sa.select(workers.c.heartbeat_at).where(workers.c.id == "w1"))
            ).scalar_one()
        assert hb2 > hb1
        # Another worker cannot renew w1's runs.
        assert await s2.renew("w2", [a, b], lease_ttl=30) == {}
    finally:
        await s1.close()
        await s2.close()


# ---------------------------------------------------------------- cancel


async def test_cancel(db_url: str) -> None:
    s1 = await Store.open(db_url)
    s2 = await Store.open(db_url, migrate=False)
    try:
        idle, busy, expired = await create_runs(s1, 3)

        # Unleased: cancelled at once, journaled, never claimable again.
        assert await s2.cancel(idle, "no longer needed") == "cancelled"
        row = await s1.get_run(idle)
        assert row.status == "cancelled" and row.cancel_requested is True
        assert row.wake_at is None and row.lease_owner is None
        assert row.error == {"reason": "cancelled", "message": "no longer needed"}
        events = await s1.load_events(idle)
        assert [e.type for e in events] == [EventType.RUN_CREATED, EventType.RUN_CANCELLED]
        assert events[-1].data == {"reason": "no longer needed"} and events[-1].seq == 2
        assert row.last_seq == 2
        assert fold(events).status == "cancelled"
        assert await s1.claim("w", limit=10, lease_ttl=LONG, only=[idle]) == []
        assert await s2.cancel(idle) == "cancelled"  # already terminal
        assert len(await s1.load_events(idle)) == 2

        # Leased: the holder is asked to stop; nothing is journaled yet.
        (cb,) = await s1.claim("w1", limit=1, lease_ttl=LONG, only=[busy])
        assert await s2.cancel(busy) == "requested"
        row = await s1.get_run(busy)
        assert row.status == "running" and row.cancel_requested is True
        assert row.lease_owner == "w1" and row.epoch == cb.epoch
        assert [e.type for e in await s1.load_events(busy)] == [EventType.RUN_CREATED]
        assert await s1.renew("w1", [busy], lease_ttl=LONG) == {busy: True}
        # The holder journals the cancellation itself.
        await s1.append(
            busy,
            cb.epoch,
            [(EventType.RUN_CANCELLED, {"reason": "cancelled by user"})],
        )
        assert await s2.cancel(busy) == "cancelled"

        # Two more runs on short leases: `other` is asked to cancel while held.
        other = (await create_runs(s1, 1))[0]
        short = {
            c.run_id: c for c in await s1.claim("w1", limit=2, lease_ttl=0.6, only=[expired, other])
        }
        assert await s2.cancel(other) == "requested"
        await asyncio.sleep(0.7)
        # A lease that has run out does not protect the run: cancelled at once,
        # and the dead holder is fenced.
        assert await s2.cancel(expired) == "cancelled"
        with pytest.raises(Fenced):
            await s1.append(expired, short[expired].epoch, [(EventType.LLM_STARTED, {})])
        assert [e.type for e in await s1.load_events(expired)] == [
            EventType.RUN_CREATED,
            EventType.RUN_CANCELLED,
        ]
        assert (await s1.get_run(expired)).status == "cancelled"
        # A run that was asked to cancel hands that over to its next holder.
        (co2,) = await s2.claim("w2", limit=1, lease_ttl=LONG, only=[other])
        assert co2.cancel_requested is True and co2.epoch == short[other].epoch + 1

        with pytest.raises(RunNotFound):
            await s1.cancel("run_missing")
    finally:
        await s1.close()
        await s2.close()


async def test_cancel_races_claims(db_url: str) -> None:
    """Cancels and claims of the same runs at once: every cancel gets a clear answer,
    and a run is either cancelled at once or held by a worker that was asked to stop."""
    stores = [await Store.open(db_url)] + [
        await Store.open(db_url, migrate=False) for _ in range(3)
    ]
    try:
        run_ids = await create_runs(stores[0], 30)
        claimed: dict[str, str] = {}

        async def claimer(store: Store, name: str) -> None:
            while True:
                got = await store.claim(name, limit=1, lease_ttl=LONG)
                if not got:
                    return
                for c in got:
                    assert c.run_id not in claimed
                    claimed[c.run_id] = name

        async def canceller(store: Store, ids: list[str]) -> list[str | BaseException]:
            out: list[str | BaseException] = []
            for run_id in ids:
                try:
                    out.append(await store.cancel(run_id))
                except Exception as exc:
                    out.append(exc)
            return out

        results = await asyncio.wait_for(
            asyncio.gather(
                claimer(stores[0], "w0"),
                claimer(stores[1], "w1"),
                canceller(stores[2], run_ids[::2]),
                canceller(stores[3], run_ids[1::2]),
            ),
            60,
        )
        outcome = dict(zip(run_ids[::2], results[2], strict=True))
        outcome.update(zip(run_ids[1::2], results[3], strict=True))
        errors = {k: v for k, v in outcome.items() if isinstance(v, BaseException)}
        assert not errors, f"cancel failed while racing a claim: {next(iter(errors.values()))!r}"
        for run_id in run_ids:
            row = await stores[0].get_run(run_id)
            types = [e.type for e in await stores[0].load_events(run_id)]
            assert row.cancel_requested is True
            if outcome[run_id] == "cancelled":
                assert run_id not in claimed
                assert row.status == "cancelled" and types == [
                    EventType.RUN_CREATED,
                    EventType.RUN_CANCELLED,
                ]
            else:
                assert outcome[run_id] == "requested"
                assert run_id in claimed and row.lease_owner == claimed[run_id]
                assert row.status == "running" and types == [EventType.RUN_CREATED]
    finally:
        for s in stores:
            await s.close()


# ---------------------------------------------------------------- agents


async def test_save_agent_versioning(db_url: str) -> None:
    async with await Store.open(db_url) as store:
        v1 = make_spec("versioned", "one")
        assert await store.save_agent(v1) == 1
        assert await store.save_agent(make_spec("versioned", "one")) == 1
        v2 = make_spec("versioned", "two")
        assert await store.save_agent(v2) == 2
        assert await store.save_agent(v2) == 2
        assert await store.save_agent(make_spec("versioned", "two", system_prompt="Be brief.")) == 3
        # Only the newest version is reused: going back is a new version.
        assert await store.save_agent(v1) == 4
        assert await store.save_agent(make_spec("other")) == 1

        assert (await store.get_agent("versioned", 2)).to_dict() == v2.to_dict()
        assert (await store.get_agent("versioned")).to_dict() == v1.to_dict()
        assert (await store.get_agent("versioned", 1)).to_dict() == v1.to_dict()

        run_id = await store.create_run(v2, "hi")
        row = await store.get_run(run_id)
        assert (row.agent_name, row.agent_version) == ("versioned", 5)
        created = (await store.load_events(run_id))[0]
        assert created.data["agent"] == {"name": "versioned", "version": 5}


async def test_inline_specs_reuse_any_identical_version(db_url: str) -> None:
    """Spawned specs (any_version) reuse any version with the same content, whatever
    the order of its keys; an agent saved as such still only reuses the newest."""
    async with await Store.open(db_url) as store:
        a, b = make_spec("reader", "a"), make_spec("reader", "b")
        first = [await store.create_run(s, "x", any_version=True) for s in (a, b)]
        again = [await store.create_run(s, "y", any_version=True) for s in (a, b, a, b)]
        versions = [(await store.get_run(r)).agent_version for r in first + again]
        assert versions == [1, 2, 1, 2, 1, 2]
        options = [{"max_depth": 2, "max_children": 4}, {"max_children": 4, "max_depth": 2}]
        tooled = [
            make_spec("reader", "a", tools=[{"builtin": "subagents", "options": o}])
            for o in options
        ]
        assert await store.save_agent(tooled[0], any_version=True) == 3
        assert await store.save_agent(tooled[1], any_version=True) == 3  # keys in another order
        # Another origin is another version; the newest-only rule is unchanged.
        assert await store.save_agent(a, origin="api", any_version=True) == 4
        assert await store.save_agent(a) == 5
        assert await store.save_agent(a, any_version=True) == 5


async def test_save_agent_concurrently(db_url: str) -> None:
    """Several processes starting runs of the same new agent at once all succeed,
    and agree on one version per distinct spec."""
    stores = [await Store.open(db_url)] + [
        await Store.open(db_url, migrate=False) for _ in range(5)
    ]
    try:
        spec = make_spec("raced", "x")
        results = await asyncio.gather(
            *(s.create_run(spec, f"in {i}") for i, s in enumerate(stores)),
            return_exceptions=True,
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        assert not errors, f"concurrent create_run failed: {errors[0]!r}"
        versions = {(await stores[0].get_run(r)).agent_version for r in results}
        assert versions == {1}
        changed = make_spec("raced", "y")
        got = await asyncio.gather(*(s.save_agent(changed) for s in stores), return_exceptions=True)
        assert got == [2] * len(stores)
    finally:
        for s in stores:
            await s.close()


# ---------------------------------------------------------------- migrations


async def test_migrations_idempotent(db_url: str) -> None:
    async with await Store.open(db_url) as first:
        run_id = await first.create_run(make_spec(), "persist me")
    async with await Store.open(db_url) as second:
        row = await second.get_run(run_id)
        assert row.input == "persist me" and row.status == "queued"
        async with second.engine.connect() as conn:
            versions = (
                await conn.execute(sa.text("SELECT version_num FROM alembic_version"))
            ).all()
        assert len(versions) == 1
    # Concurrent opens (several workers starting at once) are safe too.
    opened = await asyncio.gather(*(Store.open(db_url) for _ in range(3)))
    try:
        for s in opened:
            assert (await s.get_run(run_id)).id == run_id
            async with s.engine.connect() as conn:
                count = (
                    await conn.execute(sa.select(sa.func.count()).select_from(runs))
                ).scalar_one()
            assert count == 1
    finally:
        for s in opened:
            await s.close()
