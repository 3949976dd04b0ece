"""Agent memory: notes an agent keeps across its runs (the `memory` built-in tools)."""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from everruns.errors import StoreError
from everruns.store.backend import Backend
from everruns.store.records import new_id
from everruns.store.schema import agent_notes

MAX_NOTE_CHARS = 20_000


def _note_dict(row: Any) -> dict[str, Any]:
    m = row._mapping
    return {
        "id": m["id"],
        "agent": m["agent_name"],
        "run_id": m["run_id"],
        "text": m["text"],
        "ts": m["ts"],
    }


class Memory:
    def __init__(self, db: Backend):
        self.db = db

    async def remember(
        self,
        agent: str,
        text: str,
        *,
        run_id: str | None = None,
        idempotency_key: str | None = None,
        now: float | None = None,
    ) -> dict[str, Any]:
        """Keep a note for all later runs of `agent`. With an idempotency key, a repeat
        (a retried tool call) returns the note stored the first time."""
        if not text.strip():
            raise StoreError("a note cannot be empty")
        if len(text) > MAX_NOTE_CHARS:
            raise StoreError(f"a note is limited to {MAX_NOTE_CHARS} characters")
        values = {
            "id": new_id("note"),
            "agent_name": agent,
            "run_id": run_id,
            "text": text,
            "ts": time.time() if now is None else now,
            "idempotency_key": idempotency_key,
        }
        insert = (sqlite.insert if self.db.is_sqlite else postgresql.insert)(agent_notes)
        async with self.db.engine.begin() as conn:
            await conn.execute(insert.values(**values).on_conflict_do_nothing())
            if idempotency_key is None:
                row = (
                    await conn.execute(
                        sa.select(agent_notes).where(agent_notes.c.id == values["id"])
                    )
                ).first()
            else:
                row = (
                    await conn.execute(
                        sa.select(agent_notes).where(
                            agent_notes.c.agent_name == agent,
                            agent_notes.c.idempotency_key == idempotency_key,
                        )
                    )
                ).first()
        assert row is not None
        return _note_dict(row)

    async def recall(self, agent: str, *, limit: int | None = 50) -> list[dict[str, Any]]:
        """The newest `limit` notes of `agent` (None: all), oldest first."""
        query = (
            sa.select(agent_notes)
            .where(agent_notes.c.agent_name == agent)
            .order_by(agent_notes.c.ts.desc(), agent_notes.c.id.desc())
        )
        if limit is not None:
            query = query.limit(max(0, limit))
        async with self.db.reads.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_note_dict(r) for r in reversed(rows)]

    async def forget(self, agent: str, note_id: str | None = None) -> int:
        """Delete one note of `agent` (`note_id`) or all of them; how many were deleted."""
        query = sa.delete(agent_notes).where(agent_notes.c.agent_name == agent)
        if note_id is not None:
            query = query.where(agent_notes.c.id == note_id)
        async with self.db.engine.begin() as conn:
            result = await conn.execute(query)
        return int(result.rowcount or 0)
