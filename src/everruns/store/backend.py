"""One database as every part of the store sees it: the engine and its dialect."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from everruns.store import database


class Backend:
    """The engine of one database, shared by the store's parts."""

    def __init__(self, engine: AsyncEngine, url: str):
        self.engine = engine
        self.url = url
        self.is_sqlite = database.is_sqlite(url)

    async def ensure_row(
        self, conn: AsyncConnection, table: sa.Table, values: dict[str, Any]
    ) -> None:
        """Insert the row unless its key exists (INSERT ... ON CONFLICT DO NOTHING)."""
        insert = (sqlite.insert if self.is_sqlite else postgresql.insert)(table)
        await conn.execute(insert.values(**values).on_conflict_do_nothing())
