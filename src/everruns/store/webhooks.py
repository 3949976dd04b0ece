"""Webhooks: subscriptions, the outbox, and the deliveries with their attempts.

The outbox row of an event is written by the same commit as the event (store/journal.py,
store/writer.py), for every event type a webhook may subscribe to. `fan_out` turns outbox
rows into one delivery per matching subscription (global, the run's own, the agent spec's),
each with a stable id derived from (webhook, run, seq): fanned out twice — two processes
racing, or a crash between the insert and the outbox delete — it is still one delivery. The
delivery loop (engine/webhooks.py) takes due deliveries with a short lock and records each
attempt here; a delivery is retried until it succeeds or gives up after `give_up_after`.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import sqlalchemy as sa

from everruns.errors import StoreError
from everruns.store.agents import Agents
from everruns.store.backend import Backend
from everruns.store.records import dumps, new_id
from everruns.store.schema import events, runs, webhook_deliveries, webhook_outbox, webhooks

HISTORY = 20  # attempts kept per delivery (the newest)


def delivery_id(webhook: str, run_id: str, seq: int) -> str:
    digest = hashlib.sha256(f"{webhook}|{run_id}|{seq}".encode()).hexdigest()
    return "dlv_" + digest[:40]


def _hook(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "url": row.url,
        "events": json.loads(row.events),
        "secret_ref": row.secret_ref,
        "run_id": row.run_id,
        "created_at": row.created_at,
    }


def _delivery(row: Any) -> dict[str, Any]:
    m = row._mapping
    out = {k: m[k] for k in m.keys() if k not in ("payload", "history", "locked_until")}
    out["history"] = json.loads(m["history"])
    if out["status"] != "pending":
        out["next_attempt_at"] = None
    return out


class Webhooks:
    def __init__(self, db: Backend, agents: Agents):
        self.db = db
        self.agents = agents

    # ------------------------------------------------------------ subscriptions

    async def create(
        self, url: str, events_: list[str], secret_ref: str | None, *, run_id: str | None = None
    ) -> dict[str, Any]:
        values: dict[str, Any] = {
            "id": new_id("wh"),
            "url": url,
            "events": dumps(sorted(set(events_))),
            "secret_ref": secret_ref,
            "run_id": run_id,
            "created_at": time.time(),
        }
        async with self.db.engine.begin() as conn:
            await conn.execute(webhooks.insert().values(**values))
        return {**values, "events": json.loads(values["events"])}

    async def subscriptions(self, run_id: str | None = None) -> list[dict[str, Any]]:
        query = sa.select(webhooks).order_by(webhooks.c.created_at, webhooks.c.id)
        query = query.where(
            webhooks.c.run_id.is_(None) if run_id is None else webhooks.c.run_id == run_id
        )
        async with self.db.reads.connect() as conn:
            return [_hook(r) for r in (await conn.execute(query)).all()]

    async def delete(self, webhook_id: str) -> bool:
        async with self.db.engine.begin() as conn:
            done = await conn.execute(sa.delete(webhooks).where(webhooks.c.id == webhook_id))
        return bool(done.rowcount)

    # ------------------------------------------------------------ outbox -> deliveries

    async def fan_out(self, limit: int = 200) -> int:
        """Turn outbox rows into deliveries; how many outbox rows were processed."""
        async with self.db.reads.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(webhook_outbox).order_by(webhook_outbox.c.created_at).limit(limit)
                )
            ).all()
        if not rows:
            return 0
        for row in rows:
            await self._fan_out_one(row.run_id, int(row.seq), str(row.type))
        return len(rows)

    async def _subscribers(self, run: Any, kind: str) -> list[tuple[str, str, str | None]]:
        """(webhook id, url, secret_ref) of every subscription to `kind` for this run."""
        out: list[tuple[str, str, str | None]] = []
        async with self.db.reads.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(webhooks).where(
                        sa.or_(webhooks.c.run_id.is_(None), webhooks.c.run_id == run.id)
                    )
                )
            ).all()
        out += [(r.id, r.url, r.secret_ref) for r in rows if kind in json.loads(r.events)]
        try:
            spec = await self.agents.get_agent(run.agent_name, run.agent_version)
        except StoreError:
            spec = None
        for i, hook in enumerate((spec.webhooks if spec else None) or []):
            if kind in hook.events:
                out.append((f"agent:{run.agent_name}:{i}", hook.url, hook.secret_ref))
        return out

    async def _fan_out_one(self, run_id: str, seq: int, kind: str) -> None:
        async with self.db.reads.connect() as conn:
            run = (await conn.execute(sa.select(runs).where(runs.c.id == run_id))).first()
            event = (
                await conn.execute(
                    sa.select(events.c.ts, events.c.data).where(
                        events.c.run_id == run_id, events.c.seq == seq
                    )
                )
            ).first()
        subscribers = await self._subscribers(run, kind) if run and event else []
        now = time.time()
        async with self.db.engine.begin() as conn:
            for hook_id, url, secret_ref in subscribers:
                assert run is not None and event is not None
                did = delivery_id(hook_id, run_id, seq)
                payload = {
                    "id": did,
                    "type": kind,
                    "run_id": run_id,
                    "seq": seq,
                    "ts": event.ts,
                    "agent": run.agent_name,
                    "data": json.loads(event.data),
                }
                await self.db.ensure_row(
                    conn,
                    webhook_deliveries,
                    {
                        "id": did,
                        "webhook": hook_id,
                        "url": url,
                        "secret_ref": secret_ref,
                        "run_id": run_id,
                        "seq": seq,
                        "event_type": kind,
                        "payload": dumps(payload),
                        "status": "pending",
                        "attempts": 0,
                        "history": "[]",
                        "next_attempt_at": now,
                        "locked_until": 0.0,
                        "created_at": now,
                    },
                )
            await conn.execute(
                sa.delete(webhook_outbox).where(
                    webhook_outbox.c.run_id == run_id, webhook_outbox.c.seq == seq
                )
            )

    # ------------------------------------------------------------ deliveries

    async def take_due(self, limit: int, lock_for: float) -> list[dict[str, Any]]:
        """Due deliveries, each locked for `lock_for` s for this caller (other processes
        skip it meanwhile; a caller that dies releases it when the lock runs out)."""
        now = time.time()
        d = webhook_deliveries
        async with self.db.reads.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(d.c.id)
                    .where(d.c.status == "pending", d.c.next_attempt_at <= now)
                    .where(d.c.locked_until < now)
                    .order_by(d.c.next_attempt_at)
                    .limit(limit)
                )
            ).all()
        taken = []
        for row in rows:
            async with self.db.engine.begin() as conn:
                got = (
                    await conn.execute(
                        sa.update(d)
                        .where(d.c.id == row.id, d.c.status == "pending", d.c.locked_until < now)
                        .values(locked_until=now + lock_for)
                        .returning(*d.c)
                    )
                ).first()
            if got is not None:
                taken.append(dict(got._mapping))
        return taken

    async def record(
        self,
        did: str,
        *,
        ok: bool,
        status: int | None,
        error: str | None,
        next_attempt_at: float | None,
    ) -> None:
        """One attempt's outcome. Not ok and no `next_attempt_at`: given up (failed)."""
        now = time.time()
        d = webhook_deliveries
        async with self.db.engine.begin() as conn:
            row = (await conn.execute(sa.select(d.c.history).where(d.c.id == did))).first()
            history = json.loads(row.history) if row else []
            history = [*history, {"ts": now, "status": status, "error": error}][-HISTORY:]
            values: dict[str, Any] = {
                "attempts": d.c.attempts + 1,
                "history": dumps(history),
                "locked_until": 0.0,
            }
            if ok:
                values.update(status="delivered", delivered_at=now)
            elif next_attempt_at is None:
                values.update(status="failed")
            else:
                values.update(next_attempt_at=next_attempt_at)
            await conn.execute(sa.update(d).where(d.c.id == did).values(**values))

    async def deliveries(
        self, *, run_id: str | None = None, status: str | None = None, limit: int = 200
    ) -> list[dict[str, Any]]:
        d = webhook_deliveries
        query = sa.select(d).order_by(d.c.created_at.desc(), d.c.id).limit(limit)
        if run_id is not None:
            query = query.where(d.c.run_id == run_id)
        if status is not None:
            query = query.where(d.c.status == status)
        async with self.db.reads.connect() as conn:
            return [_delivery(r) for r in (await conn.execute(query)).all()]
