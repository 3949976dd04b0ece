"""The journal: fenced, gap-free appends and reads, and what a run's end sets off.

Every write a worker makes goes through `append`, which succeeds only if the
run's `epoch` still matches the worker's claim, so a worker whose lease was taken
over can never write again. The runs row is updated in the same statement, by
`core.projection`. When a run ends, in the same transaction: its children are
cancelled if it was cancelled, and its parent is told (`child.finished`).
"""

from __future__ import annotations

import json
import time
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from everruns.core.events import (
    CHILD_FINISHED,
    LIMITS_CHANGED,
    MESSAGE_USER,
    RUN_CANCELLED,
    TERMINAL_EVENTS,
    TERMINAL_STATUSES,
    Event,
    RunStatus,
)
from everruns.core.projection import RowFacts, RowUpdate, project
from everruns.errors import Fenced, Moved, RunNotFound, StoreError
from everruns.metrics import JOURNAL_APPEND_SECONDS
from everruns.store.backend import Backend
from everruns.store.ledger import tree_ledgers
from everruns.store.notify import notify_appended
from everruns.store.records import RunRow, dumps
from everruns.store.schema import events, runs, webhook_outbox
from everruns.store.writer import OUTBOX_EVENTS, AppendRequest, JournalWriter


class Journal:
    def __init__(self, db: Backend):
        self.db = db

    async def load_events(
        self, run_id: str, *, after: int = 0, limit: int | None = None
    ) -> list[Event]:
        query = (
            sa.select(events.c.seq, events.c.type, events.c.ts, events.c.data)
            .where(events.c.run_id == run_id, events.c.seq > after)
            .order_by(events.c.seq)
        )
        if limit is not None:
            query = query.limit(limit)
        async with self.db.reads.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [Event(r.seq, r.type, r.ts, json.loads(r.data)) for r in rows]

    async def append(
        self,
        run_id: str,
        epoch: int | None,
        new_events: list[tuple[str, dict[str, Any]]],
        *,
        conn: AsyncConnection | None = None,
        expect_seq: int | None = None,
        current: RowFacts | None = None,
    ) -> list[Event]:
        """Append events with gap-free seq, fenced by `epoch` (None: unfenced signal).

        The runs row is updated in the same statement by `core.projection.project`
        (`current`: the row as a signal found it). Raises Fenced when the epoch is
        stale; nothing is written then.
        """
        if conn is None:  # timed once, at the outermost call (the hot path: observe only)
            started = time.perf_counter()
            try:
                return await self._append(run_id, epoch, new_events, expect_seq, current)
            finally:
                JOURNAL_APPEND_SECONDS.observe(time.perf_counter() - started)
        return await self._append(run_id, epoch, new_events, expect_seq, current, conn)

    async def _append(
        self,
        run_id: str,
        epoch: int | None,
        new_events: list[tuple[str, dict[str, Any]]],
        expect_seq: int | None,
        current: RowFacts | None,
        conn: AsyncConnection | None = None,
    ) -> list[Event]:
        writer = self.db.writer
        if conn is None and writer is not None and new_events:
            kinds = {kind for kind, _ in new_events}
            if RUN_CANCELLED not in kinds:  # a cancel also cancels children: not here
                fast = await self._append_fast(
                    writer,
                    run_id,
                    epoch,
                    new_events,
                    expect_seq,
                    current,
                    parentless=bool(kinds & TERMINAL_EVENTS),
                )
                if fast is not None:
                    return fast
        if conn is None:
            async with self.db.engine.begin() as own:
                return await self.append(
                    run_id,
                    epoch,
                    new_events,
                    conn=own,
                    expect_seq=expect_seq,
                    current=current,
                )
        now = time.time()
        values = self._row_values(project(new_events, now, current))
        where = [runs.c.id == run_id]
        if epoch is not None:
            where.append(runs.c.epoch == epoch)
        if expect_seq is not None:
            where.append(runs.c.last_seq == expect_seq)
        row = (
            await conn.execute(
                sa.update(runs).where(*where).values(**values).returning(runs.c.last_seq)
            )
        ).first()
        if row is None:
            found = (await conn.execute(sa.select(runs.c.epoch).where(runs.c.id == run_id))).first()
            if found is None:
                raise RunNotFound(run_id)
            if expect_seq is not None and (epoch is None or found.epoch == epoch):
                raise Moved(f"run {run_id}: new events after seq {expect_seq}")
            raise Fenced(f"run {run_id}: epoch {epoch} is no longer current")
        first = int(row.last_seq) - len(new_events) + 1
        out = [Event(first + i, str(kind), now, data) for i, (kind, data) in enumerate(new_events)]
        if not out:
            return out
        if not self.db.is_sqlite:  # delivered at commit; carries only run id and seq
            await notify_appended(conn, run_id, out[-1].seq)
        await conn.execute(
            events.insert(),
            [
                {"run_id": run_id, "seq": e.seq, "type": e.type, "ts": e.ts, "data": dumps(e.data)}
                for e in out
            ],
        )
        outbox = [e for e in out if e.type in OUTBOX_EVENTS]
        if outbox:  # webhooks hear of these (store/webhooks.py), from this same commit
            await conn.execute(
                webhook_outbox.insert(),
                [
                    {"run_id": run_id, "seq": e.seq, "type": e.type, "created_at": now}
                    for e in outbox
                ],
            )
        ended = [e for e in out if e.type in TERMINAL_EVENTS]
        if ended:
            await self._after_end(conn, run_id, ended[-1])
        return out

    async def _append_fast(
        self,
        writer: JournalWriter,
        run_id: str,
        epoch: int | None,
        new_events: list[tuple[str, dict[str, Any]]],
        expect_seq: int | None,
        current: RowFacts | None,
        *,
        parentless: bool,
    ) -> list[Event] | None:
        """`append` on the hot path (store/writer.py). None: the run has a parent to tell
        about its end, which the caller does on the SQLAlchemy path (same transaction)."""
        now = time.time()
        update = project(new_events, now, current)
        request = AppendRequest(
            run_id=run_id,
            epoch=epoch,
            types=[str(kind) for kind, _ in new_events],
            datas=[dumps(data) for _, data in new_events],
            sets=self._plain_values(update.set),
            adds=dict(update.add),
            seqs={k: v for k, v in update.seq.items() if k != "last_seq"},  # = n, always
            expect_seq=expect_seq,
            ts=now,
            parentless=parentless,
        )
        outcome = await writer.append(request)
        if outcome.last_seq is None:
            if outcome.why is None:
                raise RunNotFound(run_id)
            row_epoch, row_seq, parent = outcome.why
            fence_ok = epoch is None or row_epoch == epoch
            if parentless and parent is not None and fence_ok:
                if expect_seq is None or row_seq == expect_seq:
                    return None
            if expect_seq is not None and fence_ok:
                raise Moved(f"run {run_id}: new events after seq {expect_seq}")
            raise Fenced(f"run {run_id}: epoch {epoch} is no longer current")
        first = outcome.last_seq - len(new_events) + 1
        return [Event(first + i, str(kind), now, data) for i, (kind, data) in enumerate(new_events)]

    def _plain_values(self, values: dict[str, Any]) -> dict[str, Any]:
        """Projected values as the database stores them (JSON text, plain strings)."""
        out: dict[str, Any] = {}
        for key, value in values.items():
            if key == "result" and isinstance(value, str) and not self.db.is_sqlite:
                value = value.replace("\x00", "\ufffd")  # PostgreSQL text cannot hold NUL
            if key in ("error", "limits", "progress") and value is not None:
                value = dumps(value)
            out[key] = str(value) if isinstance(value, StrEnum) else value
        return out

    def _row_values(self, update: RowUpdate) -> dict[str, Any]:
        """The projection as UPDATE values: increments and seq marks relative to the row."""
        values: dict[str, Any] = self._plain_values(update.set)
        for key, amount in update.add.items():
            values[key] = runs.c[key] + amount
        for key, offset in update.seq.items():
            values[key] = runs.c.last_seq + offset
        return values

    async def _after_end(self, conn: AsyncConnection, run_id: str, event: Event) -> None:
        """In the ending run's transaction: cancel its children if it was cancelled, and
        tell its parent (`child.finished`, waking it), so no crash can lose either."""
        if event.type == RUN_CANCELLED:
            children = (
                await conn.execute(
                    sa.select(runs.c.id).where(
                        runs.c.parent_id == run_id, runs.c.status.not_in(TERMINAL_STATUSES)
                    )
                )
            ).all()
            for child in children:
                await self.cancel_in(conn, child.id, f"parent {run_id} was cancelled")
        row = (await conn.execute(sa.select(runs).where(runs.c.id == run_id))).first()
        if row is None or row.parent_id is None:
            return
        parent_id = str(row.parent_id)
        parent = (
            await conn.execute(sa.select(runs.c.status).where(runs.c.id == parent_id))
        ).first()
        if parent is None or parent.status in TERMINAL_STATUSES:
            return
        # The child's tree (itself and its own sub-agents), so the parent's fold sees
        # what the whole branch spent; `own` is what the child's own calls spent.
        tree = (await tree_ledgers(conn, [run_id])).get(run_id)
        usage = {
            **(tree or RunRow.from_row(row).ledger).as_usage(),
            "cost_usd": round(tree.cost_usd if tree else float(row.cost_usd), 6),
            "own": RunRow.from_row(row).usage,
        }
        await self.signal_in(
            conn,
            parent_id,
            CHILD_FINISHED,
            {
                "run_id": run_id,
                "status": event.type.split(".")[1],
                "result": event.data.get("result"),
                "error": event.data.get("error"),
                "usage": usage,
            },
        )

    async def signal_in(
        self, conn: AsyncConnection, run_id: str, kind: str, data: dict[str, Any]
    ) -> Event:
        """`signal` inside the caller's transaction (also used for `child.finished`).

        The row is locked (PostgreSQL; SQLite's BEGIN IMMEDIATE already serializes): the
        event's effect on the row (wake a parked run, or leave it to the lease holder) is
        decided on facts no worker can change before this commits. Unlocked, a worker's
        `release(seen_seq=...)` could park the run between this read and this write, and
        the signal, read as "the holder will see it", would be slept through."""
        row = (
            await conn.execute(sa.select(runs).where(runs.c.id == run_id).with_for_update())
        ).first()
        if row is None:
            raise RunNotFound(run_id)
        status = str(row.status)
        # A message starts a new turn; raised limits let `resume` continue a failed run.
        after_end = kind in (MESSAGE_USER, LIMITS_CHANGED)
        if status == RunStatus.CANCELLED or (status in TERMINAL_STATUSES and not after_end):
            raise StoreError(f"run {run_id} is {status}")
        current = RowFacts(status, row.lease_owner is not None, row.wake_at)
        (event,) = await self.append(run_id, None, [(kind, data)], conn=conn, current=current)
        return event

    async def cancel_in(self, conn: AsyncConnection, run_id: str, reason: str) -> str:
        """`cancel` inside the caller's transaction; "missing" when there is no such run."""
        now = time.time()
        # Lock the row (PostgreSQL), so a claim cannot slip in between this read and
        # the epoch bump below; SQLite's BEGIN IMMEDIATE already does.
        row = (
            await conn.execute(sa.select(runs).where(runs.c.id == run_id).with_for_update())
        ).first()
        if row is None:
            return "missing"
        if row.status in TERMINAL_STATUSES:
            return str(row.status)
        if row.lease_owner is not None and (row.lease_expires_at or 0) >= now:
            await conn.execute(
                sa.update(runs).where(runs.c.id == run_id).values(cancel_requested=True)
            )
            return "requested"
        await conn.execute(
            sa.update(runs).where(runs.c.id == run_id).values(epoch=runs.c.epoch + 1)
        )
        await self.append(
            run_id,
            int(row.epoch) + 1,
            [(RUN_CANCELLED, {"reason": reason})],
            conn=conn,
        )
        return RunStatus.CANCELLED
