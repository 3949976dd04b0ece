"""Waiting for a run's journal to reach an event (the receipts of verbs: interrupt,
cancel): polled, so it works the same on SQLite and PostgreSQL and on any process."""

from __future__ import annotations

import asyncio
import time

from everruns.store.store import Store

RECEIPT_WAIT = 5.0


async def wait_for_event(
    store: Store, run_id: str, after: int, kinds: frozenset[str], timeout: float = RECEIPT_WAIT
) -> int | None:
    """The seq of the first event of `kinds` after `after`, or None within `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        for event in await store.load_events(run_id, after=after):
            if event.type in kinds:
                return event.seq
            after = event.seq
        if time.monotonic() >= deadline:
            return None
        await asyncio.sleep(0.1)
