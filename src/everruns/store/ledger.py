"""The tree ledger: what a run and all its descendants spent, and a run's ancestry.

Each run's own totals are columns of its row, projected from its own journal in the
append that journals each charge (core/projection.py). A tree's ledger is the sum of
those columns over the run and its descendants (a recursive query over `parent_id`),
so a charge is counted once, in the journal of the run that made the call, whatever
crashed or took over: nothing is added to a parent's row when a child spends.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from everruns.core.budget import Ledger
from everruns.store.backend import Backend
from everruns.store.schema import runs


@dataclass(frozen=True)
class Ancestor:
    """A run on the way from a run up to its root (the run itself first)."""

    id: str
    agent_name: str
    agent_version: int
    limits: dict[str, Any] | None  # `everruns budget` overrides of its spec's limits


async def tree_ledgers(conn: AsyncConnection, run_ids: list[str]) -> dict[str, Ledger]:
    """Each run's ledger over itself and all its descendants, in one query."""
    if not run_ids:
        return {}
    base = (
        sa.select(runs.c.id.label("root"), runs.c.id.label("id"))
        .where(runs.c.id.in_(run_ids))
        .cte("subtree", recursive=True)
    )
    sub = base.union_all(
        sa.select(base.c.root, runs.c.id).join(runs, runs.c.parent_id == base.c.id)
    )
    query = (
        sa.select(
            sub.c.root,
            sa.func.sum(runs.c.input_tokens),
            sa.func.sum(runs.c.output_tokens),
            sa.func.sum(runs.c.cost_usd),
            sa.func.sum(runs.c.unpriced_calls),
        )
        .join(runs, runs.c.id == sub.c.id)
        .group_by(sub.c.root)
    )
    rows = (await conn.execute(query)).all()
    return {
        str(r[0]): Ledger(int(r[1] or 0), int(r[2] or 0), float(r[3] or 0.0), int(r[4] or 0))
        for r in rows
    }


async def ancestry(conn: AsyncConnection, run_id: str) -> list[Ancestor]:
    """The run and its ancestors, the run first and the root last."""
    columns = (runs.c.id, runs.c.parent_id, runs.c.agent_name, runs.c.agent_version, runs.c.limits)
    base = (
        sa.select(*columns, sa.literal(0).label("depth"))
        .where(runs.c.id == run_id)
        .cte("ancestry", recursive=True)
    )
    up = base.union_all(
        sa.select(*columns, base.c.depth + 1).join(base, runs.c.id == base.c.parent_id)
    )
    rows = (await conn.execute(sa.select(up).order_by(up.c.depth))).all()
    return [
        Ancestor(
            r.id, r.agent_name, int(r.agent_version), json.loads(r.limits) if r.limits else None
        )
        for r in rows
    ]


class Ledgers:
    """The store's part for budgets: tree sums and ancestries, read-only."""

    def __init__(self, db: Backend):
        self.db = db

    async def tree_ledgers(self, run_ids: list[str]) -> dict[str, Ledger]:
        async with self.db.reads.connect() as conn:
            return await tree_ledgers(conn, run_ids)

    async def ancestry(self, run_id: str) -> list[Ancestor]:
        async with self.db.reads.connect() as conn:
            return await ancestry(conn, run_id)
