"""Control signals from outside the worker: messages and approvals, cancel, pause,
resume, and fork. Each one is a journal append (unfenced, or after an epoch bump
that takes the run away from a dead or absent holder)."""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from everruns.core.budget import effective_limits
from everruns.core.decide import limit_breach
from everruns.core.events import (
    LIMITS_CHANGED,
    RUN_FORKED,
    RUN_PAUSED,
    RUN_RESUMED,
    TERMINAL_STATUSES,
    Event,
    RunStatus,
)
from everruns.core.projection import totals
from everruns.core.state import fold
from everruns.errors import RunNotFound, StoreError
from everruns.store.agents import Agents
from everruns.store.backend import Backend
from everruns.store.journal import Journal
from everruns.store.records import RunRow, dumps, new_id
from everruns.store.runs import Runs
from everruns.store.schema import events, runs

# The failures a raised limit can undo (`everruns resume` after `everruns budget`).
RESUMABLE = ("budget_exceeded", "max_steps_exceeded", "deadline_exceeded")


class Control:
    def __init__(self, db: Backend, journal: Journal, runs: Runs, agents: Agents):
        self.db = db
        self.journal = journal
        self.runs = runs
        self.agents = agents

    async def signal(self, run_id: str, kind: str, data: dict[str, Any]) -> Event:
        """Journal an event from outside the worker (a user message, an approval)
        and wake the run if it is parked; a message to a finished run starts a new turn."""
        async with self.db.engine.begin() as conn:
            return await self.journal.signal_in(conn, run_id, kind, data)

    async def cancel(self, run_id: str, reason: str = "cancelled by user") -> str:
        """Cancel a run: at once if no live worker holds it, else ask its worker.

        Returns "cancelled", "requested", or the terminal status it already had.
        """
        async with self.db.engine.begin() as conn:
            outcome = await self.journal.cancel_in(conn, run_id, reason)
        if outcome == "missing":
            raise RunNotFound(run_id)
        return outcome

    async def pause(self, run_id: str) -> str:
        """Pause after the current atom. Returns "paused", "requested" or the status it had."""
        now = time.time()
        async with self.db.engine.begin() as conn:
            run = await self._locked_run(conn, run_id)
            if run.status in TERMINAL_STATUSES or run.status == RunStatus.PAUSED:
                return run.status
            if run.lease_owner is not None and (run.lease_expires_at or 0) >= now:
                await conn.execute(
                    sa.update(runs).where(runs.c.id == run_id).values(pause_requested=True)
                )
                return "requested"
            await conn.execute(
                sa.update(runs).where(runs.c.id == run_id).values(epoch=runs.c.epoch + 1)
            )
            await self.journal.append(
                run_id,
                run.epoch + 1,
                [(RUN_PAUSED, {"by": "user"})],
                conn=conn,
            )
            return RunStatus.PAUSED

    async def resume(self, run_id: str, by: str = "user") -> str:
        """Resume a paused run (or withdraw a pause request not yet honoured), or continue
        a run that failed on a limit (`RESUMABLE`) once the limit was raised: from its
        journal, so no completed call is repeated."""
        async with self.db.engine.begin() as conn:
            run = await self._locked_run(conn, run_id)
            if run.status == RunStatus.FAILED:
                await self._check_resumable(run)
                await self.journal.append(run_id, None, [(RUN_RESUMED, {"by": by})], conn=conn)
                return RunStatus.QUEUED
            if run.status != RunStatus.PAUSED:
                await conn.execute(
                    sa.update(runs).where(runs.c.id == run_id).values(pause_requested=False)
                )
                return run.status
            await self.journal.append(
                run_id,
                None,
                [(RUN_RESUMED, {"by": "user"})],
                conn=conn,
            )
            return RunStatus.QUEUED

    async def _check_resumable(self, run: RunRow) -> None:
        reason = (run.error or {}).get("reason")
        if reason not in RESUMABLE:
            raise StoreError(
                f"run {run.id} failed with {reason!r}: only a run that failed on a limit "
                f"({', '.join(RESUMABLE)}) can be resumed; send it a message to start a new turn"
            )
        spec = await self.agents.get_agent(run.agent_name, run.agent_version)
        state = fold(await self.journal.load_events(run.id))
        state.status = RunStatus.QUEUED  # as it will be: is a limit still reached?
        failure = limit_breach(state, spec, time.time())
        if failure is not None:
            raise StoreError(
                f"run {run.id} is still over its limit ({failure.message}); raise it first: "
                f"everruns budget {run.id} --max-cost-usd X / --max-tokens N / --max-steps N "
                "/ --deadline 2h"
            )

    async def change_limits(self, run_id: str, changes: dict[str, Any], by: str = "user") -> Event:
        """Journal `limits.changed` (who, old and new values): the run's limits from now on.

        `changes` are validated limits (`core.budget.check_change`); a `deadline` is
        seconds from now, journaled as seconds from the run's creation like the spec's.
        A leased run's worker sees the change at its next append; ancestors' changes
        reach the tree's checks at once (they read the runs row).
        """
        async with self.db.engine.begin() as conn:
            run = await self._locked_run(conn, run_id)
            if run.status == RunStatus.CANCELLED:
                raise StoreError(f"run {run_id} is cancelled")
            spec = await self.agents.get_agent(run.agent_name, run.agent_version)
            before = effective_limits(spec.limits, run.limits)
            new = dict(changes)
            if new.get("deadline") is not None:
                new["deadline"] = round(time.time() - run.created_at + new["deadline"], 3)
            data = {
                "by": by,
                "old": {k: getattr(before, k) for k in new},
                "new": new,
                "limits": {**(run.limits or {}), **new},
            }
            return await self.journal.signal_in(conn, run_id, LIMITS_CHANGED, data)

    async def fork(self, run_id: str, at_seq: int, *, agent_version: int | None = None) -> str:
        """A new run whose journal is a copy of the source's first `at_seq` events."""
        source = await self.runs.get_run(run_id)
        if not 1 <= at_seq <= source.last_seq:
            raise StoreError(f"seq must be between 1 and {source.last_seq}, not {at_seq}")
        version = agent_version or source.agent_version
        await self.agents.get_agent(source.agent_name, version)  # the version must exist
        prefix = await self.journal.load_events(run_id, limit=at_seq)
        new = new_id()
        now = time.time()
        async with self.db.engine.begin() as conn:
            await conn.execute(
                runs.insert().values(
                    id=new,
                    agent_name=source.agent_name,
                    agent_version=version,
                    parent_id=source.parent_id,
                    status=RunStatus.QUEUED.value,
                    epoch=0,
                    wake_at=now,
                    last_seq=at_seq,
                    input=source.input,
                    created_at=now,
                    updated_at=now,
                    **totals((e.type, e.data) for e in prefix),
                )
            )
            await conn.execute(
                events.insert(),
                [
                    {
                        "run_id": new,
                        "seq": e.seq,
                        "type": e.type,
                        "ts": e.ts,
                        "data": dumps(e.data),
                    }
                    for e in prefix
                ],
            )
            await self.journal.append(
                new,
                None,
                [(RUN_FORKED, {"from_run": run_id, "at_seq": at_seq, "agent_version": version})],
                conn=conn,
            )
        return new

    async def _locked_run(self, conn: AsyncConnection, run_id: str) -> RunRow:
        query = sa.select(runs).where(runs.c.id == run_id)
        if not self.db.is_sqlite:
            query = query.with_for_update()
        row = (await conn.execute(query)).first()
        if row is None:
            raise RunNotFound(run_id)
        return RunRow.from_row(row)
