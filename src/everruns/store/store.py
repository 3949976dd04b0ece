"""The `Store` facade: one object over one database, its methods grouped by concept.

The work is done by the parts, one module each (see docs/architecture.md):
`journal` (fenced appends, reads, the effects of a run's end), `runs` (runs and
leases), `control` (signals, cancel, pause, resume, fork), `agents`, `access`
(tokens, secrets), `schedules`, `memory`, `fleet` (workers, breakers, rate limits),
`health` (fleet gauges and doctor checks) and `blobs`. The facade builds them and
exposes their public methods under the names callers have always used
(`store.append`, `store.claim`, ...); code that wants one concept can also use the
part (`store.journal.append`).
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from everruns.store import database
from everruns.store.access import Access
from everruns.store.agents import Agents
from everruns.store.backend import Backend
from everruns.store.blobs import Blobs
from everruns.store.control import Control
from everruns.store.fleet import Fleet
from everruns.store.health import Health
from everruns.store.idempotency import Idempotency
from everruns.store.journal import Journal
from everruns.store.ledger import Ledgers
from everruns.store.memory import Memory
from everruns.store.retention import Retention
from everruns.store.runs import Runs
from everruns.store.schedules import Schedules
from everruns.store.webhooks import Webhooks
from everruns.store.writer import JournalWriter


class Store:
    """Async access to one database. Create with `await Store.open(url)`."""

    def __init__(self, engine: AsyncEngine, url: str):
        self.db = Backend(engine, url)
        self.engine = engine
        self.url = url
        self.is_sqlite = self.db.is_sqlite
        self.agents = agents = Agents(self.db)
        self.journal = journal = Journal(self.db)
        self.runs = runs = Runs(self.db, agents)
        self.control = control = Control(self.db, journal, runs, agents)
        self.access = access = Access(self.db)
        self.schedules = schedules = Schedules(self.db, agents, runs, journal)
        self.memory = memory = Memory(self.db)
        self.fleet = fleet = Fleet(self.db)
        self.blobs = blobs = Blobs(self.db)
        self.idempotency = Idempotency(self.db)
        self.webhooks = Webhooks(self.db, agents)
        self.retention = Retention(self.db)
        self.ledgers = ledgers = Ledgers(self.db)
        self.health = Health(self.db, journal)

        # journal
        self.append = journal.append
        self.load_events = journal.load_events
        # runs and leases
        self.create_run = runs.create_run
        self.get_run = runs.get_run
        self.list_runs = runs.list_runs
        self.family = runs.family
        self.count_runs_by_status = runs.count_runs_by_status
        self.claim = runs.claim
        self.renew = runs.renew
        self.release = runs.release
        self.pause_requests = runs.pause_requests
        self.control_requests = runs.control_requests
        self.clear_steer = runs.clear_steer
        # control signals
        self.signal = control.signal
        self.cancel = control.cancel
        self.steer = control.steer
        self.interrupt = control.interrupt
        self.pause = control.pause
        self.resume = control.resume
        self.fork = control.fork
        # agents
        self.save_agent = agents.save_agent
        self.get_agent = agents.get_agent
        self.get_agent_origin = agents.get_agent_origin
        self.list_agents = agents.list_agents
        self.archive_agent = agents.archive_agent
        # access
        self.create_token = access.create_token
        self.verify_token = access.verify_token
        self.list_tokens = access.list_tokens
        self.revoke_token = access.revoke_token
        self.put_secret = access.put_secret
        self.get_secret = access.get_secret
        self.list_secrets = access.list_secrets
        self.secret_bindings = access.secret_bindings
        # schedules
        self.save_schedule = schedules.save_schedule
        self.put_schedule = schedules.put_schedule
        self.get_schedule = schedules.get_schedule
        self.list_schedules = schedules.list_schedules
        self.delete_schedule = schedules.delete_schedule
        self.set_schedule_enabled = schedules.set_schedule_enabled
        self.fire_due_schedules = schedules.fire_due_schedules
        # memory
        self.remember = memory.remember
        self.recall = memory.recall
        self.forget = memory.forget
        # fleet
        self.register_worker = fleet.register_worker
        self.report_clock = fleet.report_clock
        self.stop_worker = fleet.stop_worker
        self.list_workers = fleet.list_workers
        self.breakers_open = fleet.breakers_open
        self.record_outcome = fleet.record_outcome
        self.acquire_rate = fleet.acquire_rate
        self.charge_tokens = fleet.charge_tokens
        self.acquire_slot = fleet.acquire_slot
        self.release_slot = fleet.release_slot
        # budgets: tree sums, ancestries
        self.tree_ledgers = ledgers.tree_ledgers
        self.ancestry = ledgers.ancestry
        self.change_limits = control.change_limits
        # blobs
        self.put_blobs = blobs.put_blobs
        self.get_blobs = blobs.get_blobs
        self.blob_sizes = blobs.blob_sizes

    @classmethod
    async def open(
        cls,
        url: str | None = None,
        *,
        migrate: bool = True,
        pool_size: int = 10,
        create: bool = True,
    ) -> Store:
        """Open (and migrate) a database. `create=False` is for commands that only read:
        a missing SQLite file is `DatabaseMissing` rather than a new empty database. A
        database that cannot be reached or opened is `DatabaseUnavailable`."""
        url = database.resolve_url(url)
        database.check_url(url, create=create)
        try:
            if migrate:
                await database.upgrade(url)
            return cls(database.create_engine(url, pool_size=pool_size), url)
        except (OSError, sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            raise database.unavailable(url, exc) from exc

    @property
    def writer(self) -> JournalWriter | None:
        """The journal's hot path (store/writer.py), None for in-memory SQLite."""
        return self.db.writer

    async def close(self) -> None:
        if self.db.writer is not None:
            await self.db.writer.close()
        await self.engine.dispose()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))
