"""Wake-ups for live streams: a run got new durable events.

PostgreSQL: one LISTEN connection per API process; the notification carries
`run_id:seq` only, subscribers read the rows. SQLite: streams poll briefly.
In both, an embedded worker's in-process broker wakes streams at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict

import psycopg
from sqlalchemy.engine import make_url

from everruns.store import Store
from everruns.store.notify import CHANNEL

log = logging.getLogger("everruns.api")


class EventFeed:
    def __init__(self, store: Store, poll_interval: float = 0.25):
        self.store = store
        self.poll_interval = poll_interval
        self._waiters: dict[str, set[asyncio.Event]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None
        self.listening = False

    async def start(self) -> None:
        if not self.store.is_sqlite:
            self._task = asyncio.create_task(self._listen())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    def notify(self, run_id: str) -> None:
        for event in self._waiters.get(run_id, ()):
            event.set()

    async def _listen(self) -> None:
        url = make_url(self.store.url).set(drivername="postgresql")
        dsn = url.render_as_string(hide_password=False)
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self.listening = True
                    async for note in conn.notifies():
                        self.notify(note.payload.split(":", 1)[0])
            except asyncio.CancelledError:
                raise
            except Exception:
                self.listening = False
                log.exception("LISTEN connection lost; reconnecting")
                await asyncio.sleep(1)

    def waiter(self, run_id: str) -> asyncio.Event:
        event = asyncio.Event()
        self._waiters[run_id].add(event)
        return event

    def drop(self, run_id: str, event: asyncio.Event) -> None:
        self._waiters[run_id].discard(event)
        if not self._waiters[run_id]:
            self._waiters.pop(run_id, None)

    @property
    def wait_cap(self) -> float:
        """How long a stream may sleep before re-reading the journal."""
        return 5.0 if self.listening else self.poll_interval
