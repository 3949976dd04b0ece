"""The journal's hot path: fenced appends on the database drivers directly, group-committed.

Every durable step of every run goes through here, so it avoids SQLAlchemy's per-statement
machinery (statement compilation, pool checkout, greenlet hops) and aiosqlite's thread hops:

* SQLite: one writer thread owns one `sqlite3` connection (WAL, `synchronous=FULL`). Appends
  are queued; the thread takes everything queued since its last commit and writes it in one
  `BEGIN IMMEDIATE … COMMIT` (group commit: many runs' steps share one fsync).
* PostgreSQL: one `psycopg` connection per worker process; an append is ONE statement
  (`WITH u AS (UPDATE runs … RETURNING last_seq) INSERT INTO events … FROM u`, the NOTIFY in
  the same statement), so a lone append is one round trip; appends queued while a commit is in
  flight are committed together in one transaction.

Each append in a batch is still fenced by its own epoch: an append whose `UPDATE runs … WHERE
epoch = ?` matches nothing inserts nothing and fails alone (`Fenced`, `Moved`, `RunNotFound`);
the others in the batch commit. If a statement raises (bad data), the batch is rolled back and
its appends are retried one per transaction, so only the bad one fails.

Appends with cross-run effects (a terminal event that signals a parent or cancels children) and
appends inside a caller's transaction stay on the SQLAlchemy path in `store/journal.py`.

This file is over 400 lines on purpose: the two writers share one contract (the request, the
outcome, the fencing rules and the SQL they build from a projection), and reading them side by
side is how one checks that SQLite and PostgreSQL behave the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from everruns.spec import WEBHOOK_EVENTS

# Columns an append may set or increment (anything else is a programming error).
SETTABLE = frozenset(
    {
        "updated_at",
        "status",
        "wake_at",
        "result",
        "error",
        "progress",
        "lease_owner",
        "lease_expires_at",
        "cancel_requested",
        "pause_requested",
        "interrupt_requested",
        "steer_requested",
        "verdict",
        "steps",
        "input_tokens",
        "output_tokens",
        "cost_usd",
        "unpriced_calls",
        "limits",
        "cached_input_tokens",
    }
)
ADDABLE = frozenset(
    {"steps", "input_tokens", "output_tokens", "cost_usd", "unpriced_calls", "cached_input_tokens"}
)
SEQ_MARKS = frozenset({"progress_seq", "claim_seq"})  # set to last_seq + offset
MAX_BATCH = 256
# Events a webhook may subscribe to get a `webhook_outbox` row in the same commit
# (store/webhooks.py fans it out into deliveries).
OUTBOX_EVENTS = frozenset(WEBHOOK_EVENTS)
_OUTBOX_SQL_LIST = ", ".join(f"'{kind}'" for kind in sorted(OUTBOX_EVENTS))


class AppendRejected(Exception):
    """The run's row did not match (stale epoch, moved seq, or no such run)."""


@dataclass
class AppendRequest:
    """One fenced append: events of one run plus the run-row columns they change
    (`core.projection.RowUpdate`: values to set, increments, seq marks)."""

    run_id: str
    epoch: int | None  # None: an unfenced signal
    types: list[str]
    datas: list[str]  # JSON text, one per event
    sets: dict[str, Any] = field(default_factory=dict)
    adds: dict[str, int | float] = field(default_factory=dict)
    seqs: dict[str, int] = field(default_factory=dict)
    expect_seq: int | None = None  # only if last_seq still equals this
    ts: float = 0.0
    # Only for a run without a parent (a terminal event of a child must also signal its
    # parent: that stays on the SQLAlchemy path, in the same transaction).
    parentless: bool = False

    @property
    def outbox(self) -> bool:
        """Some event of this append is one a webhook may be told about."""
        return any(kind in OUTBOX_EVENTS for kind in self.types)

    def shape(self) -> tuple[Any, ...]:
        """What the SQL text depends on (the statement cache key)."""
        return (
            tuple(sorted(self.sets)),
            tuple(sorted(self.adds)),
            tuple(sorted(self.seqs)),
            self.epoch is None,
            self.expect_seq is None,
            self.parentless,
            self.outbox,
        )


@dataclass
class AppendOutcome:
    last_seq: int | None  # None: rejected (see `why`)
    why: tuple[Any, ...] | None = None  # (epoch, last_seq, parent_id) of the row, or None


def _set_clause(req: AppendRequest, param: Callable[[str], str]) -> tuple[str, list[str]]:
    """The SET list and the names of its parameters, in order."""
    parts = [f"last_seq = last_seq + {param('n')}"]
    names = ["n"]
    for col in sorted(req.seqs):
        if col not in SEQ_MARKS:
            raise ValueError(f"an append cannot mark runs.{col}")
        parts.append(f"{col} = last_seq + {param('seq_' + col)}")
        names.append("seq_" + col)
    for col in sorted(req.sets):
        if col not in SETTABLE:
            raise ValueError(f"an append cannot set runs.{col}")
        parts.append(f"{col} = {param('set_' + col)}")
        names.append("set_" + col)
    for col in sorted(req.adds):
        if col not in ADDABLE:
            raise ValueError(f"an append cannot add to runs.{col}")
        parts.append(f"{col} = {col} + {param('add_' + col)}")
        names.append("add_" + col)
    return ", ".join(parts), names


def _where_clause(req: AppendRequest, param: Callable[[str], str]) -> tuple[str, list[str]]:
    parts = [f"id = {param('id')}"]
    names = ["id"]
    if req.epoch is not None:
        parts.append(f"epoch = {param('epoch')}")
        names.append("epoch")
    if req.expect_seq is not None:
        parts.append(f"last_seq = {param('expect')}")
        names.append("expect")
    if req.parentless:
        parts.append("parent_id IS NULL")
    return " AND ".join(parts), names


def _values(req: AppendRequest) -> dict[str, Any]:
    values: dict[str, Any] = {
        "n": len(req.types),
        "ts": req.ts,
        "id": req.run_id,
        "epoch": req.epoch,
        "expect": req.expect_seq,
    }
    for col, offset in req.seqs.items():
        values["seq_" + col] = offset
    for col, value in req.sets.items():
        values["set_" + col] = value
    for col, value in req.adds.items():
        values["add_" + col] = value
    return values


# ---------------------------------------------------------------- SQLite


class SQLiteJournalWriter:
    """One thread, one connection, group commit."""

    def __init__(self, path: str, *, on_commit: Callable[[list[str]], None] | None = None):
        self.path = path
        self.on_commit = on_commit
        self._queue: queue.SimpleQueue[tuple[AppendRequest, asyncio.Future[AppendOutcome], Any]]
        self._queue = queue.SimpleQueue()
        self._sql: dict[tuple[Any, ...], str] = {}
        self._thread: threading.Thread | None = None
        self._closed = False
        self._lock = threading.Lock()

    def _ensure_thread(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._serve, name="everruns-journal-writer", daemon=True
                    )
                    self._thread.start()

    async def append(self, req: AppendRequest) -> AppendOutcome:
        if self._closed:
            raise RuntimeError("the journal writer is closed")
        self._ensure_thread()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[AppendOutcome] = loop.create_future()
        self._queue.put((req, future, loop))
        return await future

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._queue.put(None)  # type: ignore[arg-type]
            await asyncio.to_thread(self._thread.join, 10)

    # -- the writer thread

    def _connect(self) -> sqlite3.Connection:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=60)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=60000")
        return conn

    def _serve(self) -> None:
        conn = self._connect()
        try:
            while True:
                item = self._queue.get()
                if item is None:
                    return
                batch = [item]
                stop = False
                while len(batch) < MAX_BATCH:
                    try:
                        nxt = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is None:
                        stop = True
                        break
                    batch.append(nxt)
                self._commit_batch(conn, batch)
                if stop:
                    return
        finally:
            conn.close()

    def _commit_batch(self, conn: sqlite3.Connection, batch: list[Any]) -> None:
        try:
            outcomes = self._write(conn, [req for req, _f, _l in batch])
        except Exception:
            with contextlib.suppress(Exception):
                conn.execute("ROLLBACK")
            if len(batch) == 1:
                _req, future, loop = batch[0]
                exc = _current_exception()
                loop.call_soon_threadsafe(_fail, future, exc)
                return
            for one in batch:  # isolate the append that raised
                self._commit_batch(conn, [one])
            return
        if self.on_commit is not None:
            with contextlib.suppress(Exception):
                self.on_commit([req.run_id for req, _f, _l in batch])
        for (_req, future, loop), outcome in zip(batch, outcomes, strict=True):
            loop.call_soon_threadsafe(_resolve, future, outcome)

    def _statement(self, req: AppendRequest) -> str:
        key = req.shape()
        sql = self._sql.get(key)
        if sql is None:

            def param(name: str) -> str:
                return f":{name}"

            sets, _ = _set_clause(req, param)
            where, _ = _where_clause(req, param)
            sql = f"UPDATE runs SET {sets} WHERE {where} RETURNING last_seq"
            self._sql[key] = sql
        return sql

    def _write(self, conn: sqlite3.Connection, reqs: list[AppendRequest]) -> list[AppendOutcome]:
        outcomes: list[AppendOutcome] = []
        conn.execute("BEGIN IMMEDIATE")
        for req in reqs:
            row = conn.execute(self._statement(req), _values(req)).fetchone()
            if row is None:
                found = conn.execute(
                    "SELECT epoch, last_seq, parent_id FROM runs WHERE id = ?", (req.run_id,)
                ).fetchone()
                outcomes.append(AppendOutcome(None, tuple(found) if found else None))
                continue
            last = int(row[0])
            first = last - len(req.types) + 1
            conn.executemany(
                "INSERT INTO events (run_id, seq, type, ts, data) VALUES (?, ?, ?, ?, ?)",
                [
                    (req.run_id, first + i, kind, req.ts, data)
                    for i, (kind, data) in enumerate(zip(req.types, req.datas, strict=True))
                ],
            )
            if req.outbox:
                conn.executemany(
                    "INSERT INTO webhook_outbox (run_id, seq, type, created_at) "
                    "VALUES (?, ?, ?, ?)",
                    [
                        (req.run_id, first + i, kind, req.ts)
                        for i, kind in enumerate(req.types)
                        if kind in OUTBOX_EVENTS
                    ],
                )
            outcomes.append(AppendOutcome(last))
        conn.execute("COMMIT")
        return outcomes


# ---------------------------------------------------------------- PostgreSQL


class PostgresJournalWriter:
    """One psycopg connection; one statement per append; concurrent appends share a commit."""

    def __init__(self, conninfo: str, *, on_commit: Callable[[list[str]], None] | None = None):
        self.conninfo = conninfo
        self.on_commit = on_commit
        self._conn: Any = None
        self._pending: list[tuple[AppendRequest, asyncio.Future[AppendOutcome]]] = []
        self._busy = False
        self._sql: dict[tuple[Any, ...], str] = {}
        self._closed = False
        self._connect_lock = asyncio.Lock()
        self._drainer: asyncio.Future[None] | None = None

    async def _connection(self) -> Any:
        if self._conn is None or self._conn.closed:
            async with self._connect_lock:
                if self._conn is None or self._conn.closed:
                    import psycopg

                    self._conn = await psycopg.AsyncConnection.connect(
                        self.conninfo, autocommit=True, prepare_threshold=0
                    )
        return self._conn

    async def append(self, req: AppendRequest) -> AppendOutcome:
        if self._closed:
            raise RuntimeError("the journal writer is closed")
        future: asyncio.Future[AppendOutcome] = asyncio.get_running_loop().create_future()
        self._pending.append((req, future))
        if not self._busy:
            self._busy = True
            self._drainer = asyncio.ensure_future(self._drain())
        return await future

    async def _drain(self) -> None:
        """Commit what is queued; appends that arrive meanwhile form the next batch."""
        try:
            while self._pending:
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                await self._commit_batch(batch)
        finally:
            self._busy = False

    async def _commit_batch(
        self, batch: list[tuple[AppendRequest, asyncio.Future[AppendOutcome]]]
    ) -> None:
        try:
            conn = await self._connection()
            outcomes = await self._write(conn, [req for req, _f in batch])
        except Exception as exc:
            if len(batch) == 1 or _connection_lost(exc):
                for _req, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                if _connection_lost(exc):
                    await self._reset()
                return
            for one in batch:
                await self._commit_batch([one])
            return
        if self.on_commit is not None:
            with contextlib.suppress(Exception):
                self.on_commit([req.run_id for req, _f in batch])
        for (_req, future), outcome in zip(batch, outcomes, strict=True):
            if not future.done():
                future.set_result(outcome)

    async def _reset(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    def _statement(self, req: AppendRequest) -> str:
        """One statement: the fenced UPDATE, the INSERT of its events (a VALUES list, one
        row per event: cheaper to bind than arrays) and the NOTIFY, all or nothing."""
        key = (req.shape(), len(req.types))
        sql = self._sql.get(key)
        if sql is None:

            def param(name: str) -> str:
                return f"%({name})s"

            sets, _ = _set_clause(req, param)
            where, _ = _where_clause(req, param)
            rows = ", ".join(
                f"({i + 1}, %(type_{i})s, %(data_{i})s)" for i in range(len(req.types))
            )
            # The outbox rows of webhook events, in the same statement (so the same commit).
            outbox = (
                ", ob AS (INSERT INTO webhook_outbox (run_id, seq, type, created_at) "
                f"SELECT %(id)s, seq, type, %(ts)s FROM ins WHERE type IN ({_OUTBOX_SQL_LIST}))"
                if req.outbox
                else ""
            )
            sql = (
                f"WITH u AS (UPDATE runs SET {sets} WHERE {where} RETURNING last_seq), "
                "ins AS (INSERT INTO events (run_id, seq, type, ts, data) "
                "SELECT %(id)s, u.last_seq - %(n)s + e.ord, e.type, %(ts)s, e.data "
                f"FROM u, (VALUES {rows}) AS e(ord, type, data) RETURNING seq, type){outbox} "
                "SELECT m.s, pg_notify('everruns_events', %(id)s || ':' || m.s) "
                "FROM (SELECT max(seq) AS s FROM ins) m WHERE m.s IS NOT NULL"
            )
            self._sql[key] = sql
        return sql

    def _params(self, req: AppendRequest) -> dict[str, Any]:
        values = _values(req)
        for i, (kind, data) in enumerate(zip(req.types, req.datas, strict=True)):
            values[f"type_{i}"] = kind
            values[f"data_{i}"] = data
        return values

    async def _write(self, conn: Any, reqs: list[AppendRequest]) -> list[AppendOutcome]:
        if len(reqs) == 1:  # autocommit: the statement is its own transaction, one round trip
            cur = await conn.execute(self._statement(reqs[0]), self._params(reqs[0]))
            rows = [await cur.fetchone()]
        else:  # one transaction, sent as a pipeline: one round trip for the whole batch
            async with conn.pipeline() as pipeline:
                async with conn.transaction():
                    cursors = [
                        await conn.execute(self._statement(req), self._params(req)) for req in reqs
                    ]
                await pipeline.sync()
            rows = [await cur.fetchone() for cur in cursors]
        outcomes = []
        for req, row in zip(reqs, rows, strict=True):
            outcomes.append(
                AppendOutcome(int(row[0])) if row is not None else await self._why(conn, req)
            )
        return outcomes

    async def _why(self, conn: Any, req: AppendRequest) -> AppendOutcome:
        """A rejected append: the row as it is, so the caller can say why."""
        cur = await conn.execute(
            "SELECT epoch, last_seq, parent_id FROM runs WHERE id = %s", (req.run_id,)
        )
        found = await cur.fetchone()
        return AppendOutcome(None, tuple(found) if found else None)

    async def close(self) -> None:
        self._closed = True
        await self._reset()


JournalWriter = SQLiteJournalWriter | PostgresJournalWriter


def _connection_lost(exc: BaseException) -> bool:
    try:
        import psycopg
    except ImportError:  # pragma: no cover
        return False
    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)


def _current_exception() -> BaseException:
    import sys

    exc = sys.exc_info()[1]
    return exc if exc is not None else RuntimeError("append failed")


def _resolve(future: asyncio.Future[AppendOutcome], outcome: AppendOutcome) -> None:
    if not future.done():
        future.set_result(outcome)


def _fail(future: asyncio.Future[AppendOutcome], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


def now() -> float:
    return time.time()
