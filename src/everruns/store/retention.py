"""Retention: runs never expire by default. An operator's explicit `retention:` policy
(settings) prunes the journals of runs that finished before a cut-off; the runs row (status,
result, error, usage totals) and the first and last events stay as the run's summary."""

from __future__ import annotations

import time
from collections.abc import Sequence

import sqlalchemy as sa

from everruns.store.backend import Backend
from everruns.store.schema import events, runs, webhook_deliveries

BATCH = 500


class Retention:
    def __init__(self, db: Backend):
        self.db = db

    async def prune(self, finished_before: float, statuses: Sequence[str]) -> dict[str, int]:
        """Prune the journals of runs in `statuses` last updated before `finished_before`.
        Returns {"runs": pruned runs, "events": deleted events}."""
        pruned_runs = 0
        pruned_events = 0
        query = (
            sa.select(runs.c.id, runs.c.last_seq)
            .where(runs.c.status.in_(list(statuses)), runs.c.updated_at < finished_before)
            .where(runs.c.last_seq > 2)
        )
        async with self.db.reads.connect() as conn:
            candidates = (await conn.execute(query)).all()
        for row in candidates:
            async with self.db.engine.begin() as conn:
                done = await conn.execute(
                    sa.delete(events).where(
                        events.c.run_id == row.id, events.c.seq > 1, events.c.seq < row.last_seq
                    )
                )
                await conn.execute(
                    sa.delete(webhook_deliveries).where(
                        webhook_deliveries.c.run_id == row.id,
                        webhook_deliveries.c.status != "pending",
                    )
                )
            if done.rowcount:
                pruned_runs += 1
                pruned_events += int(done.rowcount)
        return {"runs": pruned_runs, "events": pruned_events}


def cutoff(days: float, now: float | None = None) -> float:
    return (time.time() if now is None else now) - days * 86400.0
