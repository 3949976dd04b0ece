"""Run an agent to the end in this process (a worker restricted to the one run)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from everruns.core.events import TERMINAL_STATUSES
from everruns.engine.worker import Worker
from everruns.store import Store
from everruns.testing._procs import SpecLike, as_spec, sync_form, workdir
from everruns.testing.faults import RunReport


async def run_to_end(
    store: Store, run_id: str, lease_ttl: float = 2.0, timeout: float = 120
) -> None:
    """Execute one run in this process until it is terminal (or parks on a human)."""
    worker = Worker(store, concurrency=1, lease_ttl=lease_ttl, poll_interval=0.05, only=[run_id])
    task = asyncio.create_task(worker.run())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        while loop.time() < deadline and not task.done():
            row = await store.get_run(run_id)
            if row.status in TERMINAL_STATUSES or (row.status == "waiting" and row.wake_at is None):
                return
            await asyncio.sleep(0.05)
        raise TimeoutError(f"run {run_id} did not finish within {timeout:g}s")
    finally:
        worker.stop()
        await task


async def arun_agent(
    spec: SpecLike,
    input: str | None,
    *,
    db: str | None = None,
    tmp: str | Path | None = None,
    timeout: float = 120,
) -> RunReport:
    """The async form of `run_agent`."""
    agent = as_spec(spec)
    url = db or f"sqlite:///{workdir(tmp, 'everruns-run-') / 'run.db'}"
    store = await Store.open(url)
    try:
        run_id = await store.create_run(agent, input)
        await run_to_end(store, run_id, timeout=timeout)
        row = await store.get_run(run_id)
        events = await store.load_events(run_id)
    finally:
        await store.close()
    return RunReport(run_id, row.status, row.result, events)


run_agent = sync_form(
    arun_agent,
    "run_agent",
    """Run the agent once in this process; the report lists its LLM retries and waits.""",
)
