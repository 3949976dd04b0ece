"""The worker: claims runnable runs, executes them concurrently, keeps their leases.

Leases are renewed for all of a worker's runs in one statement on a timer
independent of the work, so a slow LLM call needs no heartbeat tuning. A run
missing from the renewal's answer was taken over: its task is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.metadata
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Callable

from sqlalchemy.engine import make_url

from everruns import metrics
from everruns.engine import tracing
from everruns.engine.broker import Broker
from everruns.engine.runner import RunnerOptions, RunRunner, StopReason
from everruns.engine.signals import Listener
from everruns.engine.webhooks import Deliverer
from everruns.settings import Settings, load_settings
from everruns.store import Claim, Store, new_id
from everruns.tools import sandbox
from everruns.tools.workspace import workspace_root

log = logging.getLogger("everruns.worker")


class Worker:
    def __init__(
        self,
        store: Store,
        *,
        concurrency: int = 64,
        lease_ttl: float = 15.0,
        poll_interval: float | None = None,
        max_crashes: int = 5,
        shutdown_grace: float = 10.0,
        broker: Broker | None = None,
        worker_id: str | None = None,
        on_claim: Callable[[Claim], None] | None = None,
        on_finish: Callable[[str], None] | None = None,
        only: list[str] | None = None,
        settings: Settings | None = None,
        control_interval: float = 0.2,
        claim_batch: int = 64,
    ):
        if lease_ttl <= 0:
            raise ValueError("lease_ttl must be positive")
        self.store = store
        self.concurrency = concurrency
        self.lease_ttl = lease_ttl
        # SQLite cannot notify across processes: poll for new work often (a cheap claim).
        # PostgreSQL workers LISTEN (engine/signals.py) and poll only as a fallback.
        self.poll_interval = poll_interval or (0.1 if store.is_sqlite else 0.5)
        self.control_interval = control_interval
        self.claim_batch = claim_batch  # runs claimed and starting up at once (pool-sized)
        self.starting = 0
        self.shutdown_grace = shutdown_grace
        self.broker = broker or Broker()
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{new_id('w')[-8:]}"
        self.options = RunnerOptions(
            worker_id=self.worker_id,
            max_crashes=max_crashes,
            settings=settings if settings is not None else load_settings(),
        )
        _configure_sandbox(self.options.settings, store.url)
        tracing.sink()  # configured now, so a bad OTEL_* setting is logged at start
        self.on_claim = on_claim
        self.on_finish = on_finish  # this worker stopped executing the run (ended, waits, lost)
        self.only = only  # restrict to these runs (`everruns run` executes just its own)
        self.active: dict[str, tuple[asyncio.Task[None], RunRunner]] = {}
        self._inflight = metrics.INFLIGHT.labels(self.worker_id)
        self._stop = asyncio.Event()
        self._wakeup = asyncio.Event()
        self.listener: Listener | None = None
        self._background: set[asyncio.Future[None]] = set()
        # How often each signal reached this worker (tests assert the mechanism).
        self.signals: Counter[str] = Counter()
        if not store.is_sqlite:
            self.listener = Listener(
                store.url, on_wake=self._on_notify_wake, on_control=self._on_control
            )

    def stop(self) -> None:
        """Graceful stop: finish current atoms (up to the grace period), release leases."""
        self._stop.set()
        self._wakeup.set()

    def wake(self) -> None:
        """Look for runnable runs now instead of at the next poll."""
        self._wakeup.set()

    async def run(self) -> None:
        await self.store.register_worker(
            self.worker_id, version=_version(), clock_skew=await self._clock_skew()
        )
        background = [
            asyncio.create_task(self._renew_loop()),
            asyncio.create_task(self._control_loop()),
            # Webhooks: every worker delivers from the outbox (engine/webhooks.py).
            asyncio.create_task(Deliverer(self.store, self.options.settings).run()),
        ]
        if self.listener is not None:
            self.listener.start()
        try:
            await self._claim_loop()
        finally:
            for task in background:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if self.listener is not None:
                await self.listener.stop()
            await self._drain()
            with contextlib.suppress(Exception):
                await self.options.mcp_pool.close()
            with contextlib.suppress(Exception):
                await self.store.stop_worker(self.worker_id)
            with contextlib.suppress(KeyError):
                metrics.INFLIGHT.remove(self.worker_id)
            with contextlib.suppress(Exception):
                await asyncio.to_thread(tracing.flush)

    async def _claim_loop(self) -> None:
        schedules_at = -1e9  # monotonic time due schedules were last fired
        while not self._stop.is_set():
            # Cleared before this round's claim, not after it: a wake (stop, a finished
            # run, a NOTIFY) that comes while the claim is awaited keeps the event set, so
            # the wait below returns at once instead of sleeping a whole poll interval.
            self._wakeup.clear()
            if self.only is None and time.monotonic() - schedules_at >= self.poll_interval:
                schedules_at = time.monotonic()
                await self._fire_schedules()
            # Claims are bounded by concurrency and by how many runs may start up at once
            # (each reads its journal): more runs than connections wait, never time out.
            free = min(self.concurrency - len(self.active), self.claim_batch - self.starting)
            claims: list[Claim] = []
            if free > 0:
                try:
                    if self.only is not None:  # `everruns run`: its run and its sub-agents
                        self.only = await self.store.family(self.only)
                    # Never take over a run this worker is executing: its lease only lapsed
                    # because a renewal was late (a loaded machine); renewing restores it.
                    mine = list(self.active) if len(self.active) <= 500 else None
                    claims = await self.store.claim(
                        self.worker_id,
                        limit=free,
                        lease_ttl=self.lease_ttl,
                        only=self.only,
                        exclude=mine,
                    )
                except Exception:
                    log.exception("claim failed; retrying")
            for claim in claims:
                self._start(claim)
            if claims and len(claims) == free:
                await asyncio.sleep(0)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self.poll_interval)

    async def _fire_schedules(self) -> None:
        """Start the runs of due schedules (each tick once across all workers)."""
        try:
            await self.store.fire_due_schedules()
        except Exception:
            log.exception("firing schedules failed; retrying")

    def _start(self, claim: Claim) -> None:
        runner = RunRunner(self.store, claim, self.options, self.broker)
        self.starting += 1
        runner.on_started = self._started
        task = asyncio.create_task(runner.run(), name=f"run-{claim.run_id}")
        self.active[claim.run_id] = (task, runner)
        self._inflight.set(len(self.active))
        task.add_done_callback(functools.partial(self._finished, claim.run_id))
        if self.on_claim is not None:
            self.on_claim(claim)

    def _started(self) -> None:
        self.starting -= 1
        self._wakeup.set()

    def _finished(self, run_id: str, task: asyncio.Task[None]) -> None:
        current = self.active.get(run_id)
        if current is not None and current[0] is task:
            del self.active[run_id]
            self._inflight.set(len(self.active))
        if not task.cancelled() and task.exception() is not None:
            log.error("run %s crashed in the engine", run_id, exc_info=task.exception())
        if self.on_finish is not None:
            self.on_finish(run_id)
        self._wakeup.set()

    async def _clock_skew(self) -> float | None:
        try:
            return await self.store.health.clock_skew()
        except Exception:
            log.warning("could not read the database's clock", exc_info=True)
            return None

    async def _renew_loop(self) -> None:
        interval = self.lease_ttl / 3
        clock_at = time.monotonic()
        while True:
            await asyncio.sleep(interval)
            if time.monotonic() - clock_at >= 60:  # the clock offset, for `everruns doctor`
                clock_at = time.monotonic()
                skew = await self._clock_skew()
                if skew is not None:
                    with contextlib.suppress(Exception):
                        await self.store.report_clock(self.worker_id, skew)
            # Judge only the runs this renewal asked about: a run claimed while it
            # was in flight is not in its answer, but is not lost either.
            asked = dict(self.active)
            try:
                held = await self.store.renew(self.worker_id, list(asked), lease_ttl=self.lease_ttl)
            except Exception:
                log.exception("lease renewal failed; retrying")
                continue
            try:
                pauses = await self.store.pause_requests(self.worker_id) if held else set()
            except Exception:
                pauses = set()
            for run_id in pauses:
                if run_id in self.active:
                    self.active[run_id][1].pause_requested = True
            for run_id, (task, runner) in list(self.active.items()):
                if asked.get(run_id) is not self.active[run_id]:
                    continue
                if run_id not in held:
                    self._interrupt(task, runner, StopReason.LOST)
                elif held[run_id]:
                    self._interrupt(task, runner, StopReason.CANCEL)

    async def _control_loop(self) -> None:
        """SQLite (or PostgreSQL without its LISTEN connection): look for cancel, pause,
        interrupt and steer requests of this worker's runs every `control_interval`, so a cancel reaches the
        in-flight LLM call or tool within that time instead of at the next lease renewal."""
        while True:
            await asyncio.sleep(self.control_interval)
            if not self.active:
                continue
            if self.listener is not None and self.listener.listening.is_set():
                continue
            await self._check_control(None)

    def _on_notify_wake(self) -> None:
        self.signals["wake"] += 1
        self.wake()

    def _on_control(self, owner: str, run_id: str) -> None:
        if owner == self.worker_id and run_id in self.active:
            self.signals["control"] += 1
            task = asyncio.ensure_future(self._check_control([run_id]))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _check_control(self, run_ids: list[str] | None) -> None:
        try:
            requests = await self.store.control_requests(self.worker_id, run_ids)
        except Exception:
            log.warning("reading control requests failed; retrying", exc_info=True)
            return
        for run_id, request in requests.items():
            entry = self.active.get(run_id)
            if entry is None:
                continue
            task, runner = entry
            if request.cancel:
                self._interrupt(task, runner, StopReason.CANCEL)
            elif request.interrupt:
                self._interrupt(task, runner, StopReason.INTERRUPT)
            else:
                runner.pause_requested = runner.pause_requested or request.pause
                runner.steer_requested = runner.steer_requested or request.steer

    @staticmethod
    def _interrupt(task: asyncio.Task[None], runner: RunRunner, reason: str) -> None:
        if runner.stop_reason is None and not task.done():
            runner.stop_reason = reason
            task.cancel()

    async def _drain(self) -> None:
        """Let in-flight atoms finish for up to the grace period, then release the rest."""
        if not self.active:
            return
        for _task, runner in self.active.values():
            runner.draining = True
        tasks = [t for t, _ in self.active.values()]
        _done, pending = await asyncio.wait(tasks, timeout=self.shutdown_grace)
        for run_id, (task, runner) in list(self.active.items()):
            if task in pending:
                self._interrupt(task, runner, StopReason.SHUTDOWN)
            del run_id
        if pending:
            await asyncio.wait(pending, timeout=5)


def _version() -> str:
    try:
        return importlib.metadata.version("everruns")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _configure_sandbox(settings: Settings, database_url: str) -> None:
    """The tool sandbox of this process: the operator's mode and extra paths, and what
    it must hide even inside shared paths (the workspaces, the SQLite file)."""
    hidden = [str(workspace_root(database_url))]
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        db = os.path.abspath(url.database)
        hidden += [db, f"{db}-wal", f"{db}-shm", f"{db}-journal"]
    sandbox.configure(settings.sandbox, tuple(settings.sandbox_read_only), tuple(hidden))
