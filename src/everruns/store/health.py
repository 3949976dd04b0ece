"""Fleet health read from the database: the gauges `/metrics` exports and the checks of
`everruns doctor` (the UI's Workers page shows the same "needs attention" list).

Every check is a read; none takes a write lock. `attention()` returns the findings
as plain dicts (`check`, `subject`, `message`), empty when nothing needs a human.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from everruns.core.events import EventType
from everruns.store.backend import Backend
from everruns.store.database import head_revision
from everruns.store.journal import Journal
from everruns.store.runs import runnable
from everruns.store.schema import breakers, runs, workers


@dataclass(frozen=True)
class Thresholds:
    """When a finding needs attention (seconds)."""

    dead_after: float = 60.0  # a worker without a heartbeat for this long died
    dead_within: float = 86_400.0  # ... and is reported for this long after
    stuck_after: float = 60.0  # a runnable run nobody claimed this long after its wake time
    approval_after: float = 3_600.0  # an approval pending this long
    max_skew: float = 2.0  # a worker's clock this far from the database's


class Health:
    def __init__(self, db: Backend, journal: Journal):
        self.db = db
        self.journal = journal

    async def db_time(self) -> float:
        """The database server's clock (seconds since the epoch)."""
        query = (
            "SELECT (julianday('now') - 2440587.5) * 86400.0"
            if self.db.is_sqlite
            else "SELECT extract(epoch from clock_timestamp())"
        )
        async with self.db.reads.connect() as conn:
            return float((await conn.execute(sa.text(query))).scalar_one())

    async def clock_skew(self) -> float:
        """This host's clock minus the database's, halfway through the round trip."""
        before = time.time()
        db_now = await self.db_time()
        return (before + time.time()) / 2 - db_now

    async def schema_revision(self) -> str | None:
        async with self.db.reads.connect() as conn:
            try:
                row = (
                    await conn.execute(sa.text("SELECT version_num FROM alembic_version"))
                ).first()
            except sa.exc.DBAPIError:
                return None
        return str(row[0]) if row else None

    async def migrations_current(self) -> tuple[bool, str | None, str]:
        """(current, the database's revision, the newest this code knows)."""
        revision = await self.schema_revision()
        head = head_revision()
        return revision == head, revision, head

    async def runs_by_status_agent(self) -> list[tuple[str, str, int]]:
        async with self.db.reads.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(runs.c.status, runs.c.agent_name, sa.func.count()).group_by(
                        runs.c.status, runs.c.agent_name
                    )
                )
            ).all()
        return [(str(s), str(a), int(n)) for s, a, n in rows]

    async def queue(self, now: float | None = None) -> tuple[int, float | None]:
        """(runs claimable now, the wake time of the one waiting longest)."""
        now = time.time() if now is None else now
        async with self.db.reads.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(sa.func.count(), sa.func.min(runs.c.wake_at)).where(*runnable(now))
                )
            ).one()
        return int(row[0]), (float(row[1]) if row[1] is not None else None)

    async def breakers(self) -> list[dict[str, Any]]:
        async with self.db.reads.connect() as conn:
            rows = (await conn.execute(sa.select(breakers))).all()
        return [
            {"key": r.key, "failures": int(r.failures), "open_until": r.open_until} for r in rows
        ]

    async def workers(self) -> list[dict[str, Any]]:
        """Every worker not stopped cleanly, with its last heartbeat."""
        async with self.db.reads.connect() as conn:
            rows = (
                await conn.execute(sa.select(workers).where(workers.c.stopped_at.is_(None)))
            ).all()
        return [dict(r._mapping) for r in rows]

    async def attention(self, limits: Thresholds | None = None) -> list[dict[str, Any]]:
        """What needs a human now (empty: all is well)."""
        limits = limits or Thresholds()
        now = time.time()
        found: list[dict[str, Any]] = []

        def add(check: str, subject: str, message: str) -> None:
            found.append({"check": check, "subject": subject, "message": message})

        current, revision, head = await self.migrations_current()
        if not current:
            add(
                "migrations",
                "database",
                f"schema at revision {revision or 'none'}, this version needs {head}: "
                "run `everruns db upgrade`",
            )
        versions: set[str] = set()
        for w in await self.workers():
            age = now - float(w["heartbeat_at"])
            if age > limits.dead_after:
                if age <= limits.dead_within:
                    add(
                        "dead_worker",
                        w["id"],
                        f"worker {w['id']} (host {w['hostname']}, pid {w['pid']}) has sent no "
                        f"heartbeat for {age:.0f}s and did not stop cleanly",
                    )
                continue
            versions.add(w.get("version") or "unknown")
            skew = w.get("clock_skew")
            if skew is not None and abs(skew) > limits.max_skew:
                add(
                    "clock_skew",
                    w["id"],
                    f"worker {w['id']}'s clock is {skew:+.1f}s off the database's "
                    f"(more than {limits.max_skew:g}s): leases and wake times drift",
                )
        if len(versions) > 1:
            add("versions", "workers", f"live workers run different versions: {sorted(versions)}")
        for b in await self.breakers():
            if b["open_until"] is not None and b["open_until"] > now:
                add(
                    "breaker_open",
                    b["key"],
                    f"circuit breaker {b['key']} is open for {b['open_until'] - now:.0f}s more "
                    f"after {b['failures']} failure{'s' if b['failures'] != 1 else ''} in a row",
                )
        for run_id, agent, wake_at in await self._stuck(now - limits.stuck_after, now):
            add(
                "stuck_run",
                run_id,
                f"run {run_id} ({agent}) was due {now - wake_at:.0f}s ago and no worker claimed it",
            )
        for run_id, call_id, since in await self._approvals(now - limits.approval_after):
            add(
                "approval_pending",
                run_id,
                f"run {run_id} has waited {now - since:.0f}s for an approval of call {call_id}",
            )
        return found

    async def _stuck(self, due_before: float, now: float) -> list[tuple[str, str, float]]:
        async with self.db.reads.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(runs.c.id, runs.c.agent_name, runs.c.wake_at)
                    .where(*runnable(now), runs.c.wake_at < due_before)
                    .order_by(runs.c.wake_at)
                    .limit(100)
                )
            ).all()
        return [(r.id, r.agent_name, float(r.wake_at)) for r in rows]

    async def _approvals(self, requested_before: float) -> list[tuple[str, str, float]]:
        """(run, call, requested at) of approvals still pending since before the cutoff."""
        async with self.db.reads.connect() as conn:
            ids = (
                await conn.execute(
                    sa.select(runs.c.id)
                    .where(runs.c.status == "waiting", runs.c.updated_at < requested_before)
                    .limit(200)
                )
            ).scalars()
            candidates = list(ids)
        out = []
        for run_id in candidates:
            pending: dict[str, float] = {}
            for event in await self.journal.load_events(run_id):
                call = event.data.get("call_id") if isinstance(event.data, dict) else None
                if event.type == EventType.APPROVAL_REQUESTED:
                    pending[str(call)] = event.ts
                elif event.type in (EventType.APPROVAL_GRANTED, EventType.APPROVAL_DENIED):
                    pending.pop(str(call), None)
            out += [(run_id, c, ts) for c, ts in pending.items() if ts < requested_before]
        return out
