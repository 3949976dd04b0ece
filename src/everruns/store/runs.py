"""Runs and leases: creating, reading and listing runs; claiming, renewing, releasing.

Claim and release are lease transitions, not journal events: they set the status
(running / queued / waiting) and `wake_at` of the runs row; every other column
that follows from the journal is set by `Journal.append`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from everruns.core.events import ACTIVE_STATUSES, RUN_CREATED, RunStatus
from everruns.errors import RunNotFound
from everruns.spec import AgentSpec
from everruns.store.agents import Agents
from everruns.store.backend import Backend
from everruns.store.ledger import tree_ledgers
from everruns.store.records import Claim, RunRow, dumps, new_id
from everruns.store.schema import events, runs, workers


class Runs:
    def __init__(self, db: Backend, agents: Agents):
        self.db = db
        self.agents = agents

    async def create_run(
        self,
        spec: AgentSpec,
        input: str | None,
        *,
        parent_id: str | None = None,
        run_id: str | None = None,
        created_data: dict[str, Any] | None = None,
        origin: str = "local",
        any_version: bool = False,
    ) -> str:
        """Queue a new run. `run_id` makes creation idempotent (a second call with the
        same id returns it unchanged); `created_data` adds keys to run.created; `origin`
        is where the spec came from (see everruns.policy); `any_version` reuses any
        stored version with the same content (see store/agents.py)."""
        version = await self.agents.save_agent(spec, origin=origin, any_version=any_version)
        if run_id is not None:
            async with self.db.reads.connect() as conn:
                found = (
                    await conn.execute(sa.select(runs.c.id).where(runs.c.id == run_id))
                ).first()
            if found is not None:
                return run_id
        async with self.db.engine.begin() as conn:
            return await self.insert_run(
                conn,
                spec.name,
                version,
                input,
                created_data or {},
                parent_id=parent_id,
                run_id=run_id,
            )

    async def insert_run(
        self,
        conn: AsyncConnection,
        agent: str,
        version: int,
        input: str | None,
        created_data: dict[str, Any],
        *,
        parent_id: str | None = None,
        run_id: str | None = None,
    ) -> str:
        """Queue a run (its row and its run.created event) in the caller's transaction."""
        run_id = run_id or new_id()
        now = time.time()
        await conn.execute(
            runs.insert().values(
                id=run_id,
                agent_name=agent,
                agent_version=version,
                parent_id=parent_id,
                status=RunStatus.QUEUED.value,
                epoch=0,
                wake_at=now,
                last_seq=1,
                input=input,
                created_at=now,
                updated_at=now,
            )
        )
        data: dict[str, Any] = {
            **created_data,
            "input": input,
            "agent": {"name": agent, "version": version},
        }
        if parent_id:
            data["parent_id"] = parent_id
        await conn.execute(
            events.insert().values(run_id=run_id, seq=1, type=RUN_CREATED, ts=now, data=dumps(data))
        )
        return run_id

    async def get_run(self, run_id: str) -> RunRow:
        """The run with its tree ledger (own + all descendants)."""
        async with self.db.reads.connect() as conn:
            row = (await conn.execute(sa.select(runs).where(runs.c.id == run_id))).first()
            if row is None:
                raise RunNotFound(run_id)
            trees = await tree_ledgers(conn, [run_id])
        return RunRow.from_row(row).with_tree(trees.get(run_id))

    async def list_runs(
        self,
        *,
        status: str | None = None,
        agent: str | None = None,
        limit: int = 100,
        before: tuple[float, str] | None = None,
        parent_id: str | None = None,
        search: str | None = None,
    ) -> list[RunRow]:
        """Runs newest first; `before` is the (created_at, id) of the last row seen."""
        query = sa.select(runs).order_by(runs.c.created_at.desc(), runs.c.id.desc()).limit(limit)
        if status:
            query = query.where(runs.c.status == status)
        if agent:
            query = query.where(runs.c.agent_name == agent)
        if parent_id:
            query = query.where(runs.c.parent_id == parent_id)
        if search:
            like = f"%{search}%"
            query = query.where(
                sa.or_(runs.c.id.like(like), runs.c.input.like(like), runs.c.result.like(like))
            )
        if before is not None:
            query = query.where(
                sa.or_(
                    runs.c.created_at < before[0],
                    sa.and_(runs.c.created_at == before[0], runs.c.id < before[1]),
                )
            )
        async with self.db.reads.connect() as conn:
            rows = (await conn.execute(query)).all()
            trees = await tree_ledgers(conn, [r.id for r in rows])
        return [RunRow.from_row(r).with_tree(trees.get(r.id)) for r in rows]

    async def family(self, run_ids: list[str]) -> list[str]:
        """The runs and all their descendants (sub-agents, recursively)."""
        found = list(dict.fromkeys(run_ids))
        frontier = list(found)
        async with self.db.reads.connect() as conn:
            while frontier:
                rows = (
                    await conn.execute(sa.select(runs.c.id).where(runs.c.parent_id.in_(frontier)))
                ).all()
                frontier = [r.id for r in rows if r.id not in found]
                found.extend(frontier)
        return found

    async def count_runs_by_status(self) -> dict[str, int]:
        async with self.db.reads.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(runs.c.status, sa.func.count()).group_by(runs.c.status)
                )
            ).all()
        return {str(status): int(count) for status, count in rows}

    async def claim(
        self,
        worker_id: str,
        *,
        limit: int,
        lease_ttl: float,
        now: float | None = None,
        only: list[str] | None = None,
        exclude: list[str] | None = None,
    ) -> list[Claim]:
        """Lease up to `limit` runnable runs, bumping each one's epoch.

        PostgreSQL: FOR UPDATE SKIP LOCKED lets claimers pass each other;
        SQLite: BEGIN IMMEDIATE serializes them.
        """
        if limit <= 0:
            return []
        if self.db.is_sqlite:  # an idle poll reads (no lock) instead of taking the write lock
            probe = _claimable(time.time() if now is None else now, only, exclude).limit(1)
            async with self.db.reads.connect() as conn:
                if (await conn.execute(probe)).first() is None:
                    return []
        fixed_now = now
        async with self.db.engine.begin() as conn:
            # The lease is timed from when the write lock is held, not from before waiting
            # for it: a claim that waited must not hand out a lease that is already over.
            now = time.time() if fixed_now is None else fixed_now
            statement = self._claim_statement(worker_id, now, lease_ttl, only, exclude, limit)
            rows = (await conn.execute(statement)).all()
        return [
            Claim(r.id, r.epoch, r.crashes, r.agent_name, r.agent_version, bool(r.cancel_requested))
            for r in rows
        ]

    def _claim_statement(
        self,
        worker_id: str,
        now: float,
        lease_ttl: float,
        only: list[str] | None,
        exclude: list[str] | None,
        limit: int,
    ) -> Any:
        runnable = (
            _claimable(now, only, exclude)
            .order_by(runs.c.wake_at, runs.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        crashes = sa.case(
            (runs.c.lease_owner.is_(None), 0),
            (runs.c.progress_seq > runs.c.claim_seq, 1),
            else_=runs.c.crashes + 1,
        )
        stmt = (
            sa.update(runs)
            .where(runs.c.id.in_(runnable.scalar_subquery()))
            .values(
                epoch=runs.c.epoch + 1,
                lease_owner=worker_id,
                lease_expires_at=now + lease_ttl,
                status=RunStatus.RUNNING.value,
                crashes=crashes,
                updated_at=now,
            )
            .returning(
                runs.c.id,
                runs.c.epoch,
                runs.c.crashes,
                runs.c.agent_name,
                runs.c.agent_version,
                runs.c.cancel_requested,
            )
        )
        return stmt

    async def renew(
        self, worker_id: str, run_ids: Iterable[str], *, lease_ttl: float
    ) -> dict[str, bool]:
        """Extend the leases of all of a worker's runs in one statement.

        Returns {run_id: cancel_requested} for the runs it still holds; a run
        missing from the answer was taken over and must be dropped.
        """
        ids = list(run_ids)
        async with self.db.engine.begin() as conn:
            now = time.time()  # with the write lock held: the lease runs from here
            await conn.execute(
                workers.update().where(workers.c.id == worker_id).values(heartbeat_at=now)
            )
            if not ids:
                return {}
            rows = (
                await conn.execute(
                    sa.update(runs)
                    .where(
                        runs.c.lease_owner == worker_id,
                        # Many runs: renew all the worker holds (it executes only what it holds).
                        runs.c.id.in_(ids) if len(ids) <= 500 else sa.true(),
                    )
                    .values(lease_expires_at=now + lease_ttl)
                    .returning(runs.c.id, runs.c.cancel_requested)
                )
            ).all()
        return {r.id: bool(r.cancel_requested) for r in rows}

    async def release(
        self,
        run_id: str,
        epoch: int,
        *,
        wake_at: float | None,
        status: str,
        seen_seq: int | None = None,
    ) -> bool:
        """Give up the lease; the run becomes claimable at `wake_at` (None: on a signal).

        With `seen_seq`, a signal journaled after the caller's last look (last_seq
        moved on) wakes the run at once instead of being slept through.
        """
        now = time.time()
        wake: Any = wake_at
        state: Any = str(status)
        if seen_seq is not None:
            moved = runs.c.last_seq != seen_seq
            wake = sa.case((moved, now), else_=sa.literal(wake_at, sa.Float))
            state = sa.case((moved, RunStatus.QUEUED.value), else_=str(status))
        async with self.db.engine.begin() as conn:
            result = await conn.execute(
                sa.update(runs)
                .where(runs.c.id == run_id, runs.c.epoch == epoch)
                .values(
                    lease_owner=None,
                    lease_expires_at=None,
                    wake_at=wake,
                    status=state,
                    updated_at=now,
                )
            )
        return result.rowcount == 1

    async def pause_requests(self, worker_id: str) -> set[str]:
        requests = await self.control_requests(worker_id)
        return {run_id for run_id, (_cancel, pause) in requests.items() if pause}

    async def control_requests(
        self, worker_id: str, run_ids: list[str] | None = None
    ) -> dict[str, tuple[bool, bool]]:
        """{run_id: (cancel_requested, pause_requested)} for the worker's runs with a request."""
        query = sa.select(runs.c.id, runs.c.cancel_requested, runs.c.pause_requested).where(
            runs.c.lease_owner == worker_id,
            sa.or_(runs.c.cancel_requested.is_(True), runs.c.pause_requested.is_(True)),
        )
        if run_ids is not None:
            query = query.where(runs.c.id.in_(run_ids))
        async with self.db.reads.connect() as conn:
            rows = (await conn.execute(query)).all()
        return {r.id: (bool(r.cancel_requested), bool(r.pause_requested)) for r in rows}


def _claimable(now: float, only: list[str] | None, exclude: list[str] | None = None) -> Any:
    """Runs a worker may claim at `now`: active, due, and with no live lease (`exclude`: runs
    the claimer executes already, whose lease a slow renewal let lapse)."""
    return sa.select(runs.c.id).where(
        *runnable(now),
        runs.c.id.in_(only) if only is not None else sa.true(),
        runs.c.id.not_in(exclude) if exclude else sa.true(),
    )


def runnable(now: float) -> list[Any]:
    """Runnable at `now`: active, due, and with no live lease (the queue)."""
    return [
        runs.c.status.in_(ACTIVE_STATUSES),
        runs.c.wake_at.is_not(None),
        runs.c.wake_at <= now,
        sa.or_(runs.c.lease_expires_at.is_(None), runs.c.lease_expires_at < now),
    ]
