"""How a worker hears about new work and control requests without waiting for a poll.

PostgreSQL: one LISTEN connection per worker on `everruns_wake` (a run became claimable) and
`everruns_control` (`lease_owner:run_id`: a cancel or pause was requested for a leased run),
sent by a trigger on `runs` (migration 0008), so every writer — API, CLI, another worker —
reaches idle workers and run holders at once. SQLite has no cross-process notification: the
worker polls for work and for control requests on short intervals instead (cheap reads).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from sqlalchemy.engine import make_url

log = logging.getLogger("everruns.worker")
WAKE = "everruns_wake"
CONTROL = "everruns_control"


class Listener:
    """LISTEN on the wake and control channels; calls back on the event loop."""

    def __init__(
        self,
        url: str,
        *,
        on_wake: Callable[[], None],
        on_control: Callable[[str, str], None],
    ):
        self.dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        self.on_wake = on_wake
        self.on_control = on_control
        self.listening = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="everruns-listen")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _listen(self) -> None:
        import psycopg

        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {WAKE}")
                    await conn.execute(f"LISTEN {CONTROL}")
                    self.listening.set()
                    self.on_wake()  # anything that arrived while not listening
                    async for note in conn.notifies():
                        if note.channel == WAKE:
                            self.on_wake()
                        else:
                            owner, _, run_id = note.payload.rpartition(":")
                            self.on_control(owner, run_id)
            except asyncio.CancelledError:
                raise
            except Exception:
                self.listening.clear()
                log.warning("LISTEN connection lost; polling until it is back", exc_info=True)
                await asyncio.sleep(1)
