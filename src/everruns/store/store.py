"""The store: journal appends fenced by epoch, leases, and run projections.

Every write that a worker makes goes through `append`, which succeeds only if
the run's `epoch` still matches the worker's claim. A worker whose lease was
taken over can never write again.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets as secrets_module
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from everruns.journal import (
    CHILD_FINISHED,
    MESSAGE_USER,
    RUN_CANCELLED,
    RUN_CREATED,
    RUN_FORKED,
    RUN_PAUSED,
    RUN_RESUMED,
    RUN_STARTED,
    TERMINAL_EVENTS,
    TERMINAL_STATUSES,
    Event,
)
from everruns.spec import AgentSpec, parse_spec
from everruns.store import database
from everruns.store.fleet import FleetState
from everruns.store.schedules import ScheduleState
from everruns.store.schema import agents, api_tokens, events, runs, secrets, workers

ACTIVE_STATUSES = ("queued", "running", "waiting")
# Events that start work rather than finish it: a worker that dies after only these
# made no progress (crash-loop protection).
NOT_PROGRESS = frozenset(
    {
        "run.started",
        "llm.started",
        "tool.started",
        "compaction.started",
        "tools.listed",
        "llm.fallback",
        "approval.requested",
    }
)


class StoreError(Exception):
    pass


class RunNotFound(StoreError):
    def __init__(self, run_id: str):
        super().__init__(f"no run with id {run_id!r}")
        self.run_id = run_id


class Fenced(StoreError):
    """The caller's epoch is stale: another worker holds the run now."""


class Moved(StoreError):
    """A conditional append found events the caller has not seen (a signal arrived)."""


def _token_hash(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


_B32 = "0123456789abcdefghjkmnpqrstvwxyz"


def new_id(prefix: str = "run") -> str:
    """Time-sortable id: 48-bit milliseconds + 80 random bits, Crockford base32."""
    value = (int(time.time() * 1000) << 80) | secrets_module.randbits(80)
    chars = []
    for _ in range(26):
        chars.append(_B32[value & 31])
        value >>= 5
    return f"{prefix}_{''.join(reversed(chars))}"


@dataclass(frozen=True)
class Claim:
    run_id: str
    epoch: int
    crashes: int
    agent_name: str
    agent_version: int
    cancel_requested: bool


@dataclass(frozen=True)
class RunRow:
    id: str
    agent_name: str
    agent_version: int
    parent_id: str | None
    status: str
    epoch: int
    lease_owner: str | None
    lease_expires_at: float | None
    wake_at: float | None
    last_seq: int
    crashes: int
    cancel_requested: bool
    steps: int
    input_tokens: int
    output_tokens: int
    cost_usd: float
    input: str | None
    result: str | None
    error: dict[str, Any] | None
    created_at: float
    updated_at: float

    @classmethod
    def from_row(cls, row: Any) -> RunRow:
        m = row._mapping
        return cls(
            id=m["id"],
            agent_name=m["agent_name"],
            agent_version=m["agent_version"],
            parent_id=m["parent_id"],
            status=m["status"],
            epoch=m["epoch"],
            lease_owner=m["lease_owner"],
            lease_expires_at=m["lease_expires_at"],
            wake_at=m["wake_at"],
            last_seq=m["last_seq"],
            crashes=m["crashes"],
            cancel_requested=bool(m["cancel_requested"]),
            steps=m["steps"],
            input_tokens=m["input_tokens"],
            output_tokens=m["output_tokens"],
            cost_usd=m["cost_usd"],
            input=m["input"],
            result=m["result"],
            error=json.loads(m["error"]) if m["error"] else None,
            created_at=m["created_at"],
            updated_at=m["updated_at"],
        )

    @classmethod
    def from_api(cls, run: dict[str, Any]) -> RunRow:
        """A RunRow from the HTTP API's run object (for the CLI's --server mode)."""
        usage = run.get("usage") or {}
        return cls(
            id=run["id"],
            agent_name=run["agent"],
            agent_version=run["agent_version"],
            parent_id=run.get("parent_id"),
            status=run["status"],
            epoch=run.get("epoch", 0),
            lease_owner=run.get("lease_owner"),
            lease_expires_at=None,
            wake_at=run.get("wake_at"),
            last_seq=run.get("last_seq", 0),
            crashes=0,
            cancel_requested=False,
            steps=run.get("steps", 0),
            input_tokens=usage.get("input_tokens", 0),
            output_tokens=usage.get("output_tokens", 0),
            cost_usd=usage.get("cost_usd", 0.0),
            input=run.get("input"),
            result=run.get("result"),
            error=run.get("error"),
            created_at=run.get("created_at", 0.0),
            updated_at=run.get("updated_at", 0.0),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "agent": self.agent_name,
            "agent_version": self.agent_version,
            "parent_id": self.parent_id,
            "status": self.status,
            "steps": self.steps,
            "usage": {
                "input_tokens": self.input_tokens,
                "output_tokens": self.output_tokens,
                "total_tokens": self.input_tokens + self.output_tokens,
                "cost_usd": round(self.cost_usd, 6),
            },
            "input": self.input,
            "result": self.result,
            "error": self.error,
            "epoch": self.epoch,
            "lease_owner": self.lease_owner,
            "wake_at": self.wake_at,
            "last_seq": self.last_seq,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


class Store(FleetState, ScheduleState):
    """Async access to one database. Create with `await Store.open(url)`."""

    def __init__(self, engine: AsyncEngine, url: str):
        self.engine = engine
        self.url = url
        self.is_sqlite = database.is_sqlite(url)

    @classmethod
    async def open(cls, url: str | None = None, *, migrate: bool = True) -> Store:
        url = database.resolve_url(url)
        if migrate:
            await database.upgrade(url)
        return cls(database.create_engine(url), url)

    async def close(self) -> None:
        await self.engine.dispose()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------ agents

    async def save_agent(self, spec: AgentSpec, *, origin: str = "local") -> int:
        """Store the spec as an immutable version; reuse the newest if identical (and
        of the same origin: "local" for the CLI and in-process callers, "api" for HTTP)."""
        if origin not in ("local", "api"):
            raise ValueError(f"origin must be 'local' or 'api', not {origin!r}")
        text = _dumps(spec.to_dict())
        digest = hashlib.sha256(text.encode()).hexdigest()
        for _ in range(50):
            try:
                return await self._save_agent_once(spec.name, text, digest, origin)
            except sa.exc.IntegrityError:
                # A concurrent writer (PostgreSQL, READ COMMITTED) inserted the same
                # version first: look at the newest version again.
                continue
        return await self._save_agent_once(spec.name, text, digest, origin)

    async def _save_agent_once(self, name: str, text: str, digest: str, origin: str) -> int:
        async with self.engine.begin() as conn:
            latest = (
                await conn.execute(
                    sa.select(agents.c.version, agents.c.digest, agents.c.origin)
                    .where(agents.c.name == name)
                    .order_by(agents.c.version.desc())
                    .limit(1)
                )
            ).first()
            if latest is not None and latest.digest == digest and latest.origin == origin:
                return int(latest.version)
            version = 1 if latest is None else int(latest.version) + 1
            await conn.execute(
                agents.insert().values(
                    name=name,
                    version=version,
                    spec=text,
                    digest=digest,
                    created_at=time.time(),
                    origin=origin,
                )
            )
            return version

    async def get_agent_origin(self, name: str, version: int | None = None) -> str:
        """Where an agent version's spec came from: "local" or "api"."""
        query = sa.select(agents.c.origin).where(agents.c.name == name)
        if version is not None:
            query = query.where(agents.c.version == version)
        query = query.order_by(agents.c.version.desc()).limit(1)
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            raise StoreError(f"no agent {name!r}" + (f" version {version}" if version else ""))
        return "local" if row.origin == "local" else "api"

    async def get_agent(self, name: str, version: int | None = None) -> AgentSpec:
        query = sa.select(agents.c.spec, agents.c.version).where(agents.c.name == name)
        if version is not None:
            query = query.where(agents.c.version == version)
        query = query.order_by(agents.c.version.desc()).limit(1)
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            raise StoreError(f"no agent {name!r}" + (f" version {version}" if version else ""))
        return parse_spec(json.loads(row.spec), f"agent {name} v{row.version}")

    # ------------------------------------------------------------ runs

    async def create_run(
        self,
        spec: AgentSpec,
        input: str | None,
        *,
        parent_id: str | None = None,
        run_id: str | None = None,
        created_data: dict[str, Any] | None = None,
        origin: str = "local",
    ) -> str:
        """Queue a new run. `run_id` makes creation idempotent (a second call with the
        same id returns it unchanged); `created_data` adds keys to run.created; `origin`
        is where the spec came from (see everruns.policy)."""
        version = await self.save_agent(spec, origin=origin)
        if run_id is not None:
            async with self.engine.connect() as conn:
                found = (
                    await conn.execute(sa.select(runs.c.id).where(runs.c.id == run_id))
                ).first()
            if found is not None:
                return run_id
        async with self.engine.begin() as conn:
            return await self._insert_run(
                conn,
                spec.name,
                version,
                input,
                created_data or {},
                parent_id=parent_id,
                run_id=run_id,
            )

    async def _insert_run(
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
                status="queued",
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
            events.insert().values(
                run_id=run_id, seq=1, type=RUN_CREATED, ts=now, data=_dumps(data)
            )
        )
        return run_id

    async def get_run(self, run_id: str) -> RunRow:
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(runs).where(runs.c.id == run_id))).first()
        if row is None:
            raise RunNotFound(run_id)
        return RunRow.from_row(row)

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
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [RunRow.from_row(r) for r in rows]

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
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [Event(r.seq, r.type, r.ts, json.loads(r.data)) for r in rows]

    # ------------------------------------------------------------ leases

    async def claim(
        self,
        worker_id: str,
        *,
        limit: int,
        lease_ttl: float,
        now: float | None = None,
        only: list[str] | None = None,
    ) -> list[Claim]:
        """Lease up to `limit` runnable runs, bumping each one's epoch.

        PostgreSQL: FOR UPDATE SKIP LOCKED lets claimers pass each other;
        SQLite: BEGIN IMMEDIATE serializes them.
        """
        if limit <= 0:
            return []
        now = time.time() if now is None else now
        runnable = (
            sa.select(runs.c.id)
            .where(
                runs.c.status.in_(ACTIVE_STATUSES),
                runs.c.wake_at.is_not(None),
                runs.c.wake_at <= now,
                sa.or_(runs.c.lease_expires_at.is_(None), runs.c.lease_expires_at < now),
            )
            .where(runs.c.id.in_(only) if only is not None else sa.true())
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
                status="running",
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
        async with self.engine.begin() as conn:
            rows = (await conn.execute(stmt)).all()
        return [
            Claim(r.id, r.epoch, r.crashes, r.agent_name, r.agent_version, bool(r.cancel_requested))
            for r in rows
        ]

    async def renew(
        self, worker_id: str, run_ids: Iterable[str], *, lease_ttl: float
    ) -> dict[str, bool]:
        """Extend the leases of all of a worker's runs in one statement.

        Returns {run_id: cancel_requested} for the runs it still holds; a run
        missing from the answer was taken over and must be dropped.
        """
        ids = list(run_ids)
        now = time.time()
        async with self.engine.begin() as conn:
            await conn.execute(
                workers.update().where(workers.c.id == worker_id).values(heartbeat_at=now)
            )
            if not ids:
                return {}
            rows = (
                await conn.execute(
                    sa.update(runs)
                    .where(runs.c.lease_owner == worker_id, runs.c.id.in_(ids))
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
        state: Any = status
        if seen_seq is not None:
            moved = runs.c.last_seq != seen_seq
            wake = sa.case((moved, now), else_=sa.literal(wake_at, sa.Float))
            state = sa.case((moved, "queued"), else_=status)
        async with self.engine.begin() as conn:
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

    # ------------------------------------------------------------ journal

    async def append(
        self,
        run_id: str,
        epoch: int | None,
        new_events: list[tuple[str, dict[str, Any]]],
        *,
        projection: dict[str, Any] | None = None,
        conn: AsyncConnection | None = None,
        expect_seq: int | None = None,
    ) -> list[Event]:
        """Append events with gap-free seq, fenced by `epoch` (None: unfenced signal).

        Raises Fenced when the epoch is stale; nothing is written then.
        """
        if conn is None:
            async with self.engine.begin() as own:
                return await self.append(
                    run_id,
                    epoch,
                    new_events,
                    projection=projection,
                    conn=own,
                    expect_seq=expect_seq,
                )
        now = time.time()
        values: dict[str, Any] = {"last_seq": runs.c.last_seq + len(new_events), "updated_at": now}
        if any(kind not in NOT_PROGRESS for kind, _ in new_events):
            values["progress_seq"] = runs.c.last_seq + len(new_events)
        for i, (kind, _) in enumerate(new_events):
            if kind == RUN_STARTED:  # a new holder's progress is counted from here
                values["claim_seq"] = runs.c.last_seq + i + 1
        for key, value in (projection or {}).items():
            if key == "result" and isinstance(value, str) and not self.is_sqlite:
                value = value.replace("\x00", "\ufffd")  # PostgreSQL text cannot hold NUL
            values[key] = _dumps(value) if key == "error" and value is not None else value
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
            current = (
                await conn.execute(sa.select(runs.c.epoch).where(runs.c.id == run_id))
            ).first()
            if current is None:
                raise RunNotFound(run_id)
            if expect_seq is not None and (epoch is None or current.epoch == epoch):
                raise Moved(f"run {run_id}: new events after seq {expect_seq}")
            raise Fenced(f"run {run_id}: epoch {epoch} is no longer current")
        first = int(row.last_seq) - len(new_events) + 1
        out = [Event(first + i, kind, now, data) for i, (kind, data) in enumerate(new_events)]
        if not out:
            return out
        if not self.is_sqlite:  # delivered at commit; carries only run id and seq
            await conn.execute(
                sa.text("SELECT pg_notify('everruns_events', :payload)"),
                {"payload": f"{run_id}:{out[-1].seq}"},
            )
        await conn.execute(
            events.insert(),
            [
                {"run_id": run_id, "seq": e.seq, "type": e.type, "ts": e.ts, "data": _dumps(e.data)}
                for e in out
            ],
        )
        ended = [e for e in out if e.type in TERMINAL_EVENTS]
        if ended:
            await self._after_end(conn, run_id, ended[-1])
        return out

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
                await self._cancel_in(conn, child.id, f"parent {run_id} was cancelled")
        row = (await conn.execute(sa.select(runs).where(runs.c.id == run_id))).first()
        if row is None or row.parent_id is None:
            return
        run = RunRow.from_row(row)
        parent_id = str(row.parent_id)
        parent = (
            await conn.execute(sa.select(runs.c.status).where(runs.c.id == parent_id))
        ).first()
        if parent is None or parent.status in TERMINAL_STATUSES:
            return
        usage = run.to_dict()["usage"]
        await self._signal_in(
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

    async def _signal_in(
        self, conn: AsyncConnection, run_id: str, kind: str, data: dict[str, Any]
    ) -> Event:
        now = time.time()
        row = (await conn.execute(sa.select(runs).where(runs.c.id == run_id))).first()
        if row is None:
            raise RunNotFound(run_id)
        run = RunRow.from_row(row)
        projection: dict[str, Any] = {}
        if run.status == "cancelled" or (run.status in TERMINAL_STATUSES and kind != MESSAGE_USER):
            raise StoreError(f"run {run_id} is {run.status}")
        if run.status in TERMINAL_STATUSES:
            projection = {"status": "queued", "wake_at": now, "result": None, "error": None}
        elif run.lease_owner is None and (run.wake_at is None or run.wake_at > now):
            projection = {"wake_at": now}
        (event,) = await self.append(run_id, None, [(kind, data)], projection=projection, conn=conn)
        return event

    # ------------------------------------------------------------ signals

    async def cancel(self, run_id: str, reason: str = "cancelled by user") -> str:
        """Cancel a run: at once if no live worker holds it, else ask its worker.

        Returns "cancelled", "requested", or the terminal status it already had.
        """
        async with self.engine.begin() as conn:
            outcome = await self._cancel_in(conn, run_id, reason)
        if outcome == "missing":
            raise RunNotFound(run_id)
        return outcome

    async def _cancel_in(self, conn: AsyncConnection, run_id: str, reason: str) -> str:
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
            projection={
                "status": "cancelled",
                "wake_at": None,
                "lease_owner": None,
                "lease_expires_at": None,
                "cancel_requested": True,
                "error": {"reason": "cancelled", "message": reason},
            },
            conn=conn,
        )
        return "cancelled"

    async def signal(self, run_id: str, kind: str, data: dict[str, Any]) -> Event:
        """Journal an event from outside the worker (a user message, an approval)
        and wake the run if it is parked; a message to a finished run starts a new turn."""
        async with self.engine.begin() as conn:
            return await self._signal_in(conn, run_id, kind, data)

    async def pause(self, run_id: str) -> str:
        """Pause after the current atom. Returns "paused", "requested" or the status it had."""
        now = time.time()
        async with self.engine.begin() as conn:
            run = await self._locked_run(conn, run_id)
            if run.status in TERMINAL_STATUSES or run.status == "paused":
                return run.status
            if run.lease_owner is not None and (run.lease_expires_at or 0) >= now:
                await conn.execute(
                    sa.update(runs).where(runs.c.id == run_id).values(pause_requested=True)
                )
                return "requested"
            await conn.execute(
                sa.update(runs).where(runs.c.id == run_id).values(epoch=runs.c.epoch + 1)
            )
            await self.append(
                run_id,
                run.epoch + 1,
                [(RUN_PAUSED, {"by": "user"})],
                projection={
                    "status": "paused",
                    "wake_at": None,
                    "lease_owner": None,
                    "lease_expires_at": None,
                    "pause_requested": False,
                },
                conn=conn,
            )
            return "paused"

    async def resume(self, run_id: str) -> str:
        """Resume a paused run (or withdraw a pause request not yet honoured)."""
        now = time.time()
        async with self.engine.begin() as conn:
            run = await self._locked_run(conn, run_id)
            if run.status != "paused":
                await conn.execute(
                    sa.update(runs).where(runs.c.id == run_id).values(pause_requested=False)
                )
                return run.status
            await self.append(
                run_id,
                None,
                [(RUN_RESUMED, {"by": "user"})],
                projection={"status": "queued", "wake_at": now, "pause_requested": False},
                conn=conn,
            )
            return "queued"

    async def family(self, run_ids: list[str]) -> list[str]:
        """The runs and all their descendants (sub-agents, recursively)."""
        found = list(dict.fromkeys(run_ids))
        frontier = list(found)
        async with self.engine.connect() as conn:
            while frontier:
                rows = (
                    await conn.execute(sa.select(runs.c.id).where(runs.c.parent_id.in_(frontier)))
                ).all()
                frontier = [r.id for r in rows if r.id not in found]
                found.extend(frontier)
        return found

    async def pause_requests(self, worker_id: str) -> set[str]:
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(runs.c.id).where(
                        runs.c.lease_owner == worker_id, runs.c.pause_requested.is_(True)
                    )
                )
            ).all()
        return {r.id for r in rows}

    async def fork(self, run_id: str, at_seq: int, *, agent_version: int | None = None) -> str:
        """A new run whose journal is a copy of the source's first `at_seq` events."""
        source = await self.get_run(run_id)
        if not 1 <= at_seq <= source.last_seq:
            raise StoreError(f"seq must be between 1 and {source.last_seq}, not {at_seq}")
        version = agent_version or source.agent_version
        await self.get_agent(source.agent_name, version)  # the version must exist
        prefix = await self.load_events(run_id, limit=at_seq)
        new = new_id()
        now = time.time()
        async with self.engine.begin() as conn:
            await conn.execute(
                runs.insert().values(
                    id=new,
                    agent_name=source.agent_name,
                    agent_version=version,
                    parent_id=source.parent_id,
                    status="queued",
                    epoch=0,
                    wake_at=now,
                    last_seq=at_seq,
                    input=source.input,
                    created_at=now,
                    updated_at=now,
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
                        "data": _dumps(e.data),
                    }
                    for e in prefix
                ],
            )
            await self.append(
                new,
                None,
                [(RUN_FORKED, {"from_run": run_id, "at_seq": at_seq, "agent_version": version})],
                conn=conn,
            )
        return new

    async def _locked_run(self, conn: AsyncConnection, run_id: str) -> RunRow:
        query = sa.select(runs).where(runs.c.id == run_id)
        if not self.is_sqlite:
            query = query.with_for_update()
        row = (await conn.execute(query)).first()
        if row is None:
            raise RunNotFound(run_id)
        return RunRow.from_row(row)

    # ------------------------------------------------------------ tokens and secrets

    async def create_token(self, name: str) -> tuple[str, str]:
        """A new API token: (id, plaintext). Only its sha256 is stored."""
        token_id = new_id("tok")
        plaintext = "evr_" + secrets_module.token_urlsafe(32)
        async with self.engine.begin() as conn:
            await conn.execute(
                api_tokens.insert().values(
                    id=token_id,
                    name=name,
                    token_hash=_token_hash(plaintext),
                    created_at=time.time(),
                )
            )
        return token_id, plaintext

    async def verify_token(self, plaintext: str) -> str | None:
        """The token's name if it is valid and not revoked."""
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(api_tokens.c.name).where(
                        api_tokens.c.token_hash == _token_hash(plaintext),
                        api_tokens.c.revoked.is_(False),
                    )
                )
            ).first()
        return None if row is None else str(row.name)

    async def list_tokens(self) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(sa.select(api_tokens).order_by(api_tokens.c.created_at))
            ).all()
        return [
            {"id": r.id, "name": r.name, "created_at": r.created_at, "revoked": bool(r.revoked)}
            for r in rows
        ]

    async def revoke_token(self, token_id: str) -> bool:
        async with self.engine.begin() as conn:
            result = await conn.execute(
                sa.update(api_tokens).where(api_tokens.c.id == token_id).values(revoked=True)
            )
        return result.rowcount == 1

    async def put_secret(
        self, name: str, ciphertext: str, allow_urls: list[str] | None = None
    ) -> None:
        """Store (replace) a secret and the URL patterns it may be sent to."""
        async with self.engine.begin() as conn:
            await conn.execute(sa.delete(secrets).where(secrets.c.name == name))
            await conn.execute(
                secrets.insert().values(
                    name=name,
                    ciphertext=ciphertext,
                    updated_at=time.time(),
                    allow_urls=_dumps(list(allow_urls or [])),
                )
            )

    async def get_secret(self, name: str) -> str | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(sa.select(secrets.c.ciphertext).where(secrets.c.name == name))
            ).first()
        return None if row is None else str(row.ciphertext)

    async def secret_bindings(self) -> dict[str, list[str]]:
        """Every stored secret's name and the URL patterns it may be sent to."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(sa.select(secrets.c.name, secrets.c.allow_urls))).all()
        return {r.name: [str(u) for u in json.loads(r.allow_urls or "[]")] for r in rows}

    async def list_secrets(self) -> list[str]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(sa.select(secrets.c.name).order_by(secrets.c.name))).all()
        return [r.name for r in rows]

    async def list_agents(self) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(
                        agents.c.name, agents.c.version, agents.c.created_at, agents.c.archived
                    ).order_by(agents.c.name, agents.c.version)
                )
            ).all()
        latest: dict[str, dict[str, Any]] = {}
        for r in rows:
            latest[r.name] = {
                "name": r.name,
                "version": r.version,
                "created_at": r.created_at,
                "archived": bool(r.archived),
            }
        return list(latest.values())

    async def archive_agent(self, name: str) -> bool:
        async with self.engine.begin() as conn:
            result = await conn.execute(
                sa.update(agents).where(agents.c.name == name).values(archived=True)
            )
        return result.rowcount > 0

    async def list_workers(self, alive_within: float = 60.0) -> list[dict[str, Any]]:
        now = time.time()
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(workers).where(
                        workers.c.stopped_at.is_(None), workers.c.heartbeat_at > now - alive_within
                    )
                )
            ).all()
            counts: dict[str, int] = dict(
                (
                    await conn.execute(
                        sa.select(runs.c.lease_owner, sa.func.count())
                        .where(runs.c.lease_owner.is_not(None), runs.c.lease_expires_at > now)
                        .group_by(runs.c.lease_owner)
                    )
                ).all()
            )
        return [
            {
                "id": r.id,
                "hostname": r.hostname,
                "pid": r.pid,
                "started_at": r.started_at,
                "heartbeat_at": r.heartbeat_at,
                "runs": int(counts.get(r.id, 0)),
            }
            for r in rows
        ]

    async def count_runs_by_status(self) -> dict[str, int]:
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(runs.c.status, sa.func.count()).group_by(runs.c.status)
                )
            ).all()
        return {str(status): int(count) for status, count in rows}

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))

    # ------------------------------------------------------------ workers

    async def register_worker(self, worker_id: str) -> None:
        now = time.time()
        async with self.engine.begin() as conn:
            await conn.execute(
                workers.insert().values(
                    id=worker_id,
                    hostname=socket.gethostname(),
                    pid=os.getpid(),
                    started_at=now,
                    heartbeat_at=now,
                )
            )

    async def stop_worker(self, worker_id: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                workers.update().where(workers.c.id == worker_id).values(stopped_at=time.time())
            )
