"""One database as every part of the store sees it: the engine and its dialect."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from everruns.store import database

if TYPE_CHECKING:
    from everruns.store.writer import JournalWriter


class Backend:
    """The engine of one database, shared by the store's parts.

    `engine` for transactions that write, `reads` (same pool) for those that only read
    (deferred on SQLite: no lock), and `writer`, the journal's hot path (store/writer.py).
    """

    def __init__(self, engine: AsyncEngine, url: str):
        self.engine = engine
        self.reads = database.readonly(engine)
        self.url = url
        self.is_sqlite = database.is_sqlite(url)
        self.writer: JournalWriter | None = database.create_writer(url)

    async def ensure_row(
        self, conn: AsyncConnection, table: sa.Table, values: dict[str, Any]
    ) -> None:
        """Insert the row unless its key exists (INSERT ... ON CONFLICT DO NOTHING)."""
        insert = (sqlite.insert if self.is_sqlite else postgresql.insert)(table)
        await conn.execute(insert.values(**values).on_conflict_do_nothing())
