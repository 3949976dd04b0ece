"""Fleet-wide shared state: workers, circuit breakers and rate-limit token buckets.

Every worker reads and writes these rows, so an open breaker or an empty
bucket is seen by the whole fleet, not just the worker that noticed.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import sqlalchemy as sa

from everruns.store.backend import Backend
from everruns.store.schema import breakers, rate_buckets, rate_slots, runs, workers


class Fleet:
    def __init__(self, db: Backend):
        self.db = db

    async def breakers_open(self, keys: list[str], now: float | None = None) -> dict[str, float]:
        """{key: open_until} for the breakers among `keys` that are open now."""
        now = time.time() if now is None else now
        async with self.db.reads.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(breakers.c.key, breakers.c.open_until).where(
                        breakers.c.key.in_(keys), breakers.c.open_until > now
                    )
                )
            ).all()
        return {r.key: float(r.open_until) for r in rows}

    async def record_outcome(
        self, key: str, *, ok: bool, threshold: int, cooldown: float
    ) -> float | None:
        """Count a success or a breaker-relevant failure; returns open_until if it opened."""
        now = time.time()
        async with self.db.engine.begin() as conn:
            if ok:
                await conn.execute(
                    sa.update(breakers)
                    .where(breakers.c.key == key)
                    .values(failures=0, open_until=None, updated_at=now)
                )
                return None
            await self.db.ensure_row(conn, breakers, {"key": key, "failures": 0, "updated_at": now})
            row = (
                await conn.execute(
                    sa.update(breakers)
                    .where(breakers.c.key == key)
                    .values(failures=breakers.c.failures + 1, updated_at=now)
                    .returning(breakers.c.failures)
                )
            ).one()
            if row.failures >= threshold:
                open_until = now + cooldown
                await conn.execute(
                    sa.update(breakers).where(breakers.c.key == key).values(open_until=open_until)
                )
                return open_until
        return None

    async def acquire_rate(
        self,
        key: str,
        *,
        rpm: float | None,
        tpm: float | None,
        tokens: float,
        burst: float | None = None,
    ) -> float:
        """Take one request and `tokens` from the bucket; 0.0 when granted, else the
        seconds to wait before asking again (nothing is taken then). `burst`: the most
        requests the bucket holds (default `rpm`; 1 spaces requests evenly)."""
        now = time.time()
        rpm_cap = min(burst, rpm) if burst and rpm else rpm or float("inf")
        tpm_cap = tpm or float("inf")
        async with self.db.engine.begin() as conn:
            await self.db.ensure_row(
                conn,
                rate_buckets,
                {
                    "key": key,
                    "requests": min(rpm_cap, 1e12),
                    "tokens": min(tpm_cap, 1e15),
                    "updated_at": now,
                },
            )
            query = sa.select(rate_buckets).where(rate_buckets.c.key == key)
            if not self.db.is_sqlite:
                query = query.with_for_update()
            row = (await conn.execute(query)).one()
            elapsed = max(0.0, now - row.updated_at)
            requests = min(rpm_cap, row.requests + elapsed * rpm / 60) if rpm else 1e12
            have_tokens = min(tpm_cap, row.tokens + elapsed * tpm_cap / 60) if tpm else 1e15
            need_tokens = min(
                tokens, tpm_cap
            )  # a call larger than the quota waits for a full bucket
            wait = 0.0
            if rpm and requests < 1:
                wait = max(wait, (1 - requests) * 60 / rpm)
            if tpm and have_tokens < need_tokens:
                wait = max(wait, (need_tokens - have_tokens) * 60 / tpm)
            if wait == 0.0:
                requests -= 1
                have_tokens -= need_tokens
            await conn.execute(
                sa.update(rate_buckets)
                .where(rate_buckets.c.key == key)
                # `now` was read before the row lock: a writer that held the lock may have
                # stored a later time. Never move the clock back (that would refill twice).
                .values(requests=requests, tokens=have_tokens, updated_at=max(now, row.updated_at))
            )
            return wait

    async def acquire_slot(self, key: str, holder: str, *, limit: int, ttl: float) -> bool:
        """Take one of `limit` concurrent slots of `key` for `holder` (until released or
        `ttl` seconds pass); False when all are taken. Taking it again is a no-op."""
        now = time.time()
        async with self.db.engine.begin() as conn:
            # The bucket row of the key serializes the takers (SQLite: the write lock).
            await self.db.ensure_row(
                conn, rate_buckets, {"key": key, "requests": 0, "tokens": 0, "updated_at": now}
            )
            lock = sa.select(rate_buckets.c.key).where(rate_buckets.c.key == key)
            await conn.execute(lock if self.db.is_sqlite else lock.with_for_update())
            await conn.execute(
                sa.delete(rate_slots).where(rate_slots.c.key == key, rate_slots.c.expires_at <= now)
            )
            holders = set(
                (
                    await conn.execute(
                        sa.select(rate_slots.c.holder).where(rate_slots.c.key == key)
                    )
                ).scalars()
            )
            if holder in holders:
                return True
            if len(holders) >= limit:
                return False
            await conn.execute(
                rate_slots.insert().values(key=key, holder=holder, expires_at=now + ttl)
            )
            return True

    async def release_slot(self, key: str, holder: str) -> None:
        async with self.db.engine.begin() as conn:
            await conn.execute(
                sa.delete(rate_slots).where(rate_slots.c.key == key, rate_slots.c.holder == holder)
            )

    async def charge_tokens(self, key: str, tokens: float) -> None:
        """Correct a bucket after a call: debit (or credit) the difference to the estimate."""
        async with self.db.engine.begin() as conn:
            await conn.execute(
                sa.update(rate_buckets)
                .where(rate_buckets.c.key == key)
                .values(tokens=rate_buckets.c.tokens - tokens)
            )

    async def register_worker(
        self, worker_id: str, *, version: str | None = None, clock_skew: float | None = None
    ) -> None:
        now = time.time()
        async with self.db.engine.begin() as conn:
            await conn.execute(
                workers.insert().values(
                    id=worker_id,
                    hostname=socket.gethostname(),
                    pid=os.getpid(),
                    started_at=now,
                    heartbeat_at=now,
                    version=version,
                    clock_skew=clock_skew,
                )
            )

    async def report_clock(self, worker_id: str, clock_skew: float) -> None:
        """Store this worker's clock offset from the database's (`everruns doctor`)."""
        async with self.db.engine.begin() as conn:
            await conn.execute(
                workers.update().where(workers.c.id == worker_id).values(clock_skew=clock_skew)
            )

    async def stop_worker(self, worker_id: str) -> None:
        async with self.db.engine.begin() as conn:
            await conn.execute(
                workers.update().where(workers.c.id == worker_id).values(stopped_at=time.time())
            )

    async def list_workers(self, alive_within: float = 60.0) -> list[dict[str, Any]]:
        now = time.time()
        async with self.db.reads.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(workers).where(
                        workers.c.stopped_at.is_(None), workers.c.heartbeat_at > now - alive_within
                    )
                )
            ).all()
            counts: dict[str, int] = dict(
                (
                    await conn.execute(
                        sa.select(runs.c.lease_owner, sa.func.count())
                        .where(runs.c.lease_owner.is_not(None), runs.c.lease_expires_at > now)
                        .group_by(runs.c.lease_owner)
                    )
                ).all()
            )
        return [
            {
                "id": r.id,
                "hostname": r.hostname,
                "pid": r.pid,
                "started_at": r.started_at,
                "heartbeat_at": r.heartbeat_at,
                "version": r.version,
                "clock_skew": r.clock_skew,
                "runs": int(counts.get(r.id, 0)),
            }
            for r in rows
        ]
