"""Idempotency keys of state-changing API requests, shared by every API process.

The first request with a key claims it by inserting its row (insert-first: of two concurrent
duplicates, on any number of API processes, exactly one insert succeeds); the others read the
row. When the first request finishes, its response (status and body) is stored and every
repeat with the same fingerprint (method, path, body) gets it back. A claim whose request
died with its process (`locked_until` passed, no response stored) may be taken over, so a
key is never stuck. Rows are kept `TTL` seconds (24 h) and purged afterwards.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from everruns.store.backend import Backend
from everruns.store.schema import idempotency_keys as keys

TTL = 24 * 3600.0
LOCK = 60.0  # a claim without a response is another request's for this long


@dataclass(frozen=True)
class Claimed:
    """This request owns the key: execute it, then `finish` or `abandon`."""


@dataclass(frozen=True)
class Replay:
    status: int
    body: str
    content_type: str


@dataclass(frozen=True)
class Busy:
    """The first request with this key is still running."""


@dataclass(frozen=True)
class Mismatch:
    """The key was used for a different request (method, path or body)."""


Begin = Claimed | Replay | Busy | Mismatch


class Idempotency:
    def __init__(self, db: Backend):
        self.db = db

    async def begin(self, scope: str, key: str, fingerprint: str) -> Begin:
        now = time.time()
        values = {
            "scope": scope,
            "key": key,
            "fingerprint": fingerprint,
            "locked_until": now + LOCK,
            "created_at": now,
            "expires_at": now + TTL,
        }
        where = (keys.c.scope == scope, keys.c.key == key)
        insert = (sqlite.insert if self.db.is_sqlite else postgresql.insert)(keys)
        async with self.db.engine.begin() as conn:
            statement = insert.values(**values).on_conflict_do_nothing().returning(keys.c.key)
            if (await conn.execute(statement)).first() is not None:
                return Claimed()
            row = (await conn.execute(sa.select(keys).where(*where))).first()
            if row is None:  # deleted (abandoned) in between: the caller may try again
                return Busy()
            if row.expires_at < now:  # an old key: this request starts afresh
                await conn.execute(sa.update(keys).where(*where).values(**values, status=None))
                return Claimed()
            if row.fingerprint != fingerprint:
                return Mismatch()
            if row.status is not None:
                return Replay(int(row.status), row.body or "", row.content_type or "")
            taken = await conn.execute(
                sa.update(keys)
                .where(*where, keys.c.status.is_(None), keys.c.locked_until < now)
                .values(locked_until=now + LOCK)
                .returning(keys.c.key)
            )
            return Claimed() if taken.first() is not None else Busy()

    async def finish(self, scope: str, key: str, status: int, body: str, content_type: str) -> None:
        async with self.db.engine.begin() as conn:
            await conn.execute(
                sa.update(keys)
                .where(keys.c.scope == scope, keys.c.key == key)
                .values(status=status, body=body, content_type=content_type[:128])
            )

    async def abandon(self, scope: str, key: str) -> None:
        """The request failed in a way a retry may fix (5xx): forget the claim."""
        async with self.db.engine.begin() as conn:
            await conn.execute(
                sa.delete(keys).where(
                    keys.c.scope == scope, keys.c.key == key, keys.c.status.is_(None)
                )
            )

    async def purge(self, now: float | None = None) -> int:
        """Delete expired keys; how many."""
        now = time.time() if now is None else now
        async with self.db.engine.begin() as conn:
            done = await conn.execute(sa.delete(keys).where(keys.c.expires_at < now))
        return int(done.rowcount or 0)


def fingerprint(method: str, path: str, query: bytes, body: bytes) -> str:
    """The request a key stands for; JSON bodies compare by value, not by layout."""
    try:
        canonical = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":")).encode()
    except ValueError:
        canonical = body
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), query, canonical):
        digest.update(len(part).to_bytes(8, "big") + part)
    return digest.hexdigest()
