"""PostgreSQL NOTIFY for appended events: how API processes learn of new events at once.

The payload is only `run_id:seq`; listeners read the rows (api/feed.py). SQLite has
no NOTIFY: its streams poll.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

CHANNEL = "everruns_events"


async def notify_appended(conn: AsyncConnection, run_id: str, seq: int) -> None:
    """Announce the run's new last seq; delivered when the transaction commits."""
    await conn.execute(
        sa.text(f"SELECT pg_notify('{CHANNEL}', :payload)"), {"payload": f"{run_id}:{seq}"}
    )
