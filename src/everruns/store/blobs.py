"""Content-addressed blobs (workspace files), stored once by sha256."""

from __future__ import annotations

import time

import sqlalchemy as sa

from everruns.store.backend import Backend
from everruns.store.schema import blobs


class Blobs:
    def __init__(self, db: Backend):
        self.db = db

    async def put_blobs(self, contents: dict[str, bytes]) -> None:
        """Store contents by sha256 (already-stored ones are left alone)."""
        now = time.time()
        async with self.db.engine.begin() as conn:
            for sha, data in contents.items():
                await self.db.ensure_row(
                    conn,
                    blobs,
                    {"sha256": sha, "size": len(data), "content": data, "created_at": now},
                )

    async def get_blobs(self, shas: list[str]) -> dict[str, bytes]:
        if not shas:
            return {}
        async with self.db.reads.connect() as conn:
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

    async def blob_sizes(self, shas: list[str]) -> dict[str, int]:
        """sha256 -> size of the stored blobs among `shas` (missing ones are absent)."""
        if not shas:
            return {}
        async with self.db.reads.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(blobs.c.sha256, blobs.c.size).where(blobs.c.sha256.in_(shas))
                )
            ).all()
        return {r.sha256: int(r.size) for r in rows}
