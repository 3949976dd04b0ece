"""Schedules: runs started on a clock.

Every worker calls `fire_due_schedules` from its claim loop. Firing is one
transaction per batch: the due schedule rows are locked (PostgreSQL: FOR
UPDATE SKIP LOCKED, so workers pass each other; SQLite: BEGIN IMMEDIATE
serializes them), the overlap policy is applied, the run is created, and the
schedule's next tick is set strictly after `now`. So each tick fires once across
the fleet, and after downtime the missed ticks are caught up by a single run.
`schedule_runs` (primary key agent + tick) makes a second run for one tick
impossible even if that reasoning were wrong.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from everruns.core.events import TERMINAL_STATUSES
from everruns.core.schedule import OVERLAP_POLICIES, parse_schedule
from everruns.errors import StoreError
from everruns.spec import AgentSpec
from everruns.store.agents import Agents
from everruns.store.backend import Backend
from everruns.store.journal import Journal
from everruns.store.runs import Runs
from everruns.store.schema import agents, runs, schedule_runs, schedules

log = logging.getLogger("everruns.schedules")


@dataclass(frozen=True)
class FireResult:
    """What firing one due schedule did."""

    agent: str
    action: str  # created | skipped | failed
    tick: float  # the tick this fire answers (the latest one due)
    due_at: float  # when the schedule was due (earlier than `tick` after downtime)
    next_fire_at: float
    run_id: str | None = None
    cancelled: dict[str, str] = field(default_factory=dict)  # run id -> cancel outcome
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "agent": self.agent,
            "action": self.action,
            "tick": self.tick,
            "due_at": self.due_at,
            "next_fire_at": self.next_fire_at,
            "run_id": self.run_id,
            "cancelled": dict(self.cancelled),
            "reason": self.reason,
        }


def _schedule_dict(row: Any) -> dict[str, Any]:
    m = row._mapping
    return {
        "agent": m["agent_name"],
        "expression": m["expression"],
        "agent_version": m["agent_version"] if m["agent_version"] is not None else "latest",
        "overlap": m["overlap"],
        "input": m["input"],
        "enabled": bool(m["enabled"]),
        "next_fire_at": m["next_fire_at"],
        "last_fired_at": m["last_fired_at"],
        "last_run_id": m["last_run_id"],
        "created_at": m["created_at"],
        "updated_at": m["updated_at"],
    }


class Schedules:
    def __init__(self, db: Backend, agents: Agents, runs: Runs, journal: Journal):
        self.db = db
        self.agents = agents
        self.runs = runs
        self.journal = journal

    async def save_schedule(
        self, spec: AgentSpec, *, pin: bool = True, now: float | None = None
    ) -> dict[str, Any]:
        """Store the agent version and schedule its `schedule` (pinned to that version,
        or with `pin=False` to whatever version is the latest at each fire)."""
        if not spec.schedule:
            raise StoreError(f"schedule: agent {spec.name!r} has no `schedule` in its spec")
        version = await self.agents.save_agent(spec)
        return await self.put_schedule(
            spec.name,
            spec.schedule,
            agent_version=version if pin else None,
            input=spec.schedule_input,
            overlap=spec.overlap,
            now=now,
        )

    async def put_schedule(
        self,
        agent: str,
        expression: str,
        *,
        agent_version: int | None = None,
        input: str | None = None,
        overlap: str = "skip",
        enabled: bool = True,
        now: float | None = None,
    ) -> dict[str, Any]:
        """Create or replace an agent's schedule; its next tick is the first after `now`."""
        try:
            parsed = parse_schedule(expression)
        except ValueError as exc:
            raise StoreError(f"schedule: {exc}") from None
        if overlap not in OVERLAP_POLICIES:
            raise StoreError(
                f"schedule_overlap: must be one of {', '.join(OVERLAP_POLICIES)}, not {overlap!r}"
            )
        now = time.time() if now is None else now
        values = {
            "expression": parsed.expression,
            "agent_version": agent_version,
            "overlap": overlap,
            "input": input,
            "enabled": enabled,
            "next_fire_at": parsed.next_after(now),
            "updated_at": now,
        }
        for attempt in range(5):
            try:
                async with self.db.engine.begin() as conn:
                    await self._require_agent(conn, agent, agent_version)
                    query = sa.select(schedules.c.agent_name).where(schedules.c.agent_name == agent)
                    if not self.db.is_sqlite:
                        query = query.with_for_update()
                    if (await conn.execute(query)).first() is None:
                        await conn.execute(
                            schedules.insert().values(agent_name=agent, created_at=now, **values)
                        )
                    else:
                        await conn.execute(
                            sa.update(schedules)
                            .where(schedules.c.agent_name == agent)
                            .values(**values)
                        )
                break
            except sa.exc.IntegrityError:  # a concurrent first insert (PostgreSQL)
                if attempt == 4:
                    raise
        found = await self.get_schedule(agent)
        assert found is not None
        return found

    async def _require_agent(self, conn: AsyncConnection, agent: str, version: int | None) -> None:
        query = sa.select(agents.c.version).where(agents.c.name == agent)
        if version is not None:
            query = query.where(agents.c.version == version)
        if (await conn.execute(query.limit(1))).first() is None:
            what = f"agent {agent!r}" + (f" version {version}" if version is not None else "")
            raise StoreError(f"no {what} (store it first, e.g. `everruns schedule add`)")

    async def get_schedule(self, agent: str) -> dict[str, Any] | None:
        async with self.db.reads.connect() as conn:
            row = (
                await conn.execute(sa.select(schedules).where(schedules.c.agent_name == agent))
            ).first()
        return None if row is None else _schedule_dict(row)

    async def list_schedules(self) -> list[dict[str, Any]]:
        async with self.db.reads.connect() as conn:
            rows = (await conn.execute(sa.select(schedules).order_by(schedules.c.agent_name))).all()
        return [_schedule_dict(r) for r in rows]

    async def delete_schedule(self, agent: str) -> bool:
        """Remove a schedule (runs it created are left alone)."""
        async with self.db.engine.begin() as conn:
            result = await conn.execute(sa.delete(schedules).where(schedules.c.agent_name == agent))
            await conn.execute(sa.delete(schedule_runs).where(schedule_runs.c.agent_name == agent))
        return result.rowcount == 1

    async def set_schedule_enabled(
        self, agent: str, enabled: bool, *, now: float | None = None
    ) -> dict[str, Any] | None:
        """Pause or resume a schedule. Resuming does not catch up the paused time:
        the next tick is the first after `now`."""
        now = time.time() if now is None else now
        async with self.db.engine.begin() as conn:
            query = sa.select(schedules).where(schedules.c.agent_name == agent)
            if not self.db.is_sqlite:
                query = query.with_for_update()
            row = (await conn.execute(query)).first()
            if row is None:
                return None
            values: dict[str, Any] = {"enabled": enabled, "updated_at": now}
            if enabled and not row.enabled:
                values["next_fire_at"] = parse_schedule(row.expression).next_after(now)
            await conn.execute(
                sa.update(schedules).where(schedules.c.agent_name == agent).values(**values)
            )
        return await self.get_schedule(agent)

    async def fire_due_schedules(
        self, now: float | None = None, *, limit: int = 100
    ) -> list[FireResult]:
        """Fire every enabled schedule whose next tick is at or before `now`, once.

        Safe to call from any number of workers at once; `now` is injectable for tests.
        """
        now = time.time() if now is None else now
        query = (
            sa.select(schedules)
            .where(schedules.c.enabled.is_(True), schedules.c.next_fire_at <= now)
            .order_by(schedules.c.next_fire_at, schedules.c.agent_name)
            .limit(limit)
        )
        if not self.db.is_sqlite:
            query = query.with_for_update(skip_locked=True)
        results: list[FireResult] = []
        async with self.db.engine.begin() as conn:
            for row in (await conn.execute(query)).all():
                results.append(await self._fire_one(conn, row, now))
        for r in results:
            if r.action == "created":
                log.info("schedule %s fired run %s (tick %.3f)", r.agent, r.run_id, r.tick)
            else:
                log.info("schedule %s %s tick %.3f: %s", r.agent, r.action, r.tick, r.reason)
        return results

    async def _fire_one(self, conn: AsyncConnection, row: Any, now: float) -> FireResult:
        agent = str(row.agent_name)
        due_at = float(row.next_fire_at)
        try:
            parsed = parse_schedule(row.expression)
        except ValueError as exc:  # cannot happen for rows written by put_schedule
            await conn.execute(
                sa.update(schedules)
                .where(schedules.c.agent_name == agent)
                .values(enabled=False, updated_at=now)
            )
            return FireResult(agent, "failed", due_at, due_at, due_at, reason=f"disabled: {exc}")
        tick = max(due_at, parsed.latest_at_or_before(now))
        next_at = parsed.next_after(now)
        done = {
            "next_fire_at": next_at,
            "last_fired_at": now,
            "updated_at": now,
        }

        # The runs of this schedule that are still active; forget the finished ones.
        active = [
            str(r.id)
            for r in (
                await conn.execute(
                    sa.select(runs.c.id)
                    .select_from(schedule_runs.join(runs, runs.c.id == schedule_runs.c.run_id))
                    .where(
                        schedule_runs.c.agent_name == agent,
                        runs.c.status.not_in(tuple(TERMINAL_STATUSES)),
                    )
                    .order_by(runs.c.created_at)
                )
            ).all()
        ]
        await conn.execute(
            sa.delete(schedule_runs).where(
                schedule_runs.c.agent_name == agent, schedule_runs.c.run_id.not_in(active)
            )
        )

        def update() -> Any:
            return sa.update(schedules).where(schedules.c.agent_name == agent)

        overlap = str(row.overlap)
        if active and overlap == "skip":
            await conn.execute(update().values(**done))
            return FireResult(
                agent,
                "skipped",
                tick,
                due_at,
                next_at,
                reason=f"previous run {active[-1]} is still active (overlap: skip)",
            )
        version = row.agent_version
        if version is None:
            version = (
                await conn.execute(
                    sa.select(sa.func.max(agents.c.version)).where(agents.c.name == agent)
                )
            ).scalar()
        if (
            version is None
            or (
                await conn.execute(
                    sa.select(agents.c.version).where(
                        agents.c.name == agent, agents.c.version == version
                    )
                )
            ).first()
            is None
        ):
            await conn.execute(update().values(**done))
            return FireResult(
                agent, "failed", tick, due_at, next_at, reason=f"agent {agent!r} not found"
            )
        cancelled: dict[str, str] = {}
        if active and overlap == "cancel_previous":
            for run_id in active:
                cancelled[run_id] = await self.journal.cancel_in(
                    conn, run_id, f"superseded by the scheduled run of tick {tick:.3f}"
                )
        info = {
            "agent": agent,
            "expression": row.expression,
            "tick": tick,
            "due_at": due_at,
            "fired_at": now,
            "catch_up": tick > due_at,
            "overlap": overlap,
        }
        if cancelled:
            info["cancelled"] = sorted(cancelled)
        run_id = await self.runs.insert_run(
            conn, agent, int(version), row.input, {"schedule": info}
        )
        await conn.execute(
            schedule_runs.insert().values(
                agent_name=agent, tick=tick, run_id=run_id, created_at=now
            )
        )
        await conn.execute(update().values(last_run_id=run_id, **done))
        return FireResult(agent, "created", tick, due_at, next_at, run_id, cancelled)
