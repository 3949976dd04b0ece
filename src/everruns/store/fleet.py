"""Fleet-wide shared state: circuit breakers and rate-limit token buckets.

Every worker reads and writes these rows, so an open breaker or an empty
bucket is seen by the whole fleet, not just the worker that noticed.
"""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from everruns.store.schema import blobs, breakers, rate_buckets


class FleetState:
    engine: AsyncEngine
    reads: AsyncEngine
    is_sqlite: bool

    async def _ensure_row(
        self, conn: AsyncConnection, table: sa.Table, values: dict[str, Any]
    ) -> None:
        insert = (sqlite.insert if self.is_sqlite else postgresql.insert)(table)
        await conn.execute(insert.values(**values).on_conflict_do_nothing())

    # ------------------------------------------------------------ breakers

    async def breakers_open(self, keys: list[str], now: float | None = None) -> dict[str, float]:
        """{key: open_until} for the breakers among `keys` that are open now."""
        now = time.time() if now is None else now
        async with self.reads.connect() as conn:
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
        async with self.engine.begin() as conn:
            if ok:
                await conn.execute(
                    sa.update(breakers)
                    .where(breakers.c.key == key)
                    .values(failures=0, open_until=None, updated_at=now)
                )
                return None
            await self._ensure_row(conn, breakers, {"key": key, "failures": 0, "updated_at": now})
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

    # ------------------------------------------------------------ rate limits

    async def acquire_rate(
        self, key: str, *, rpm: float | None, tpm: float | None, tokens: float
    ) -> float:
        """Take one request and `tokens` from the bucket; 0.0 when granted, else the
        seconds to wait before asking again (nothing is taken then)."""
        now = time.time()
        rpm_cap = rpm or float("inf")
        tpm_cap = tpm or float("inf")
        async with self.engine.begin() as conn:
            await self._ensure_row(
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
            if not self.is_sqlite:
                query = query.with_for_update()
            row = (await conn.execute(query)).one()
            elapsed = max(0.0, now - row.updated_at)
            requests = min(rpm_cap, row.requests + elapsed * rpm_cap / 60) if rpm else 1e12
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

    async def charge_tokens(self, key: str, tokens: float) -> None:
        """Correct a bucket after a call: debit (or credit) the difference to the estimate."""
        async with self.engine.begin() as conn:
            await conn.execute(
                sa.update(rate_buckets)
                .where(rate_buckets.c.key == key)
                .values(tokens=rate_buckets.c.tokens - tokens)
            )

    # ------------------------------------------------------------ blobs

    async def put_blobs(self, contents: dict[str, bytes]) -> None:
        """Store contents by sha256 (already-stored ones are left alone)."""
        now = time.time()
        async with self.engine.begin() as conn:
            for sha, data in contents.items():
                await self._ensure_row(
                    conn,
                    blobs,
                    {"sha256": sha, "size": len(data), "content": data, "created_at": now},
                )

    async def get_blobs(self, shas: list[str]) -> dict[str, bytes]:
        if not shas:
            return {}
        async with self.reads.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(blobs.c.sha256, blobs.c.content).where(blobs.c.sha256.in_(shas))
                )
            ).all()
        found = {r.sha256: bytes(r.content) for r in rows}
        missing = set(shas) - set(found)
        if missing:
            raise LookupError(f"workspace blobs missing from the database: {sorted(missing)[:3]}")
        return found
