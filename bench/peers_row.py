#!/usr/bin/env python3
"""everruns as a row of the peer benchmark (`../shared/peers-bench`, its README).

    ./run.sh --with-private-pg \\
      --extra 'everruns-sqlite=/path/to/.venv/bin/python /path/to/bench/peers_row.py --store sqlite' \\
      --extra 'everruns-pg=/path/to/.venv/bin/python /path/to/bench/peers_row.py --store pg'

The same workload as every other row: a workflow is N durable steps in sequence, each step a
trivial function whose ~100-byte JSON result is durably recorded before the next. For us a
durable step is one journaled LLM call or one journaled tool call, so a workflow of N steps is
a run of N/2 scripted LLM answers that each call a no-op tool returning the peers' payload
(plus the final answer). One in-process `Worker` executes every run (SQLite `synchronous=FULL`
in WAL mode, the journal committed before the next step); the concurrent burst launches 50 runs
of 20 steps at once on the same worker (concurrency 64).

Printed: the `RESULT {json}` line the driver reads (`common.emit`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import common  # from peers-bench (run.py puts it on PYTHONPATH)

from everruns import tool
from everruns.engine.broker import Broker
from everruns.engine.worker import Worker
from everruns.spec import AgentSpec, parse_spec
from everruns.store import Store

TERMINAL = ("run.completed", "run.failed", "run.cancelled")


@tool(effect="pure")
def step(i: int) -> dict[str, Any]:
    """The peers' step: a small JSON-able dict."""
    return common.payload(i)


_specs: dict[int, AgentSpec] = {}


def spec_for(n_steps: int) -> AgentSpec:
    """A run of `n_steps` durable steps: n/2 answers calling `step`, n/2 tool calls."""
    if n_steps not in _specs:
        usage = {"input_tokens": 10, "output_tokens": 5}
        responses: list[dict[str, Any]] = [
            {"tool_calls": [{"name": "step", "arguments": {"i": i}}], "usage": usage}
            for i in range(n_steps // 2)
        ]
        responses.append({"text": "done", "usage": usage})
        _specs[n_steps] = parse_spec(
            {
                "name": f"peers-{n_steps}",
                "model": {"provider": "scripted", "responses": responses},
                "tools": [{"python": "peers_row:step"}],
                "limits": {"max_steps": n_steps + 10},
            }
        )
    return _specs[n_steps]


class Harness:
    def __init__(self, store: Store):
        self.store = store
        self.broker = Broker()
        self.worker = Worker(
            store, concurrency=64, lease_ttl=30, poll_interval=0.05, broker=self.broker
        )
        self.task: asyncio.Task[None] | None = None
        self.done: dict[str, asyncio.Future[str]] = {}
        self._feed = self.broker.subscribe(None)
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.task = asyncio.create_task(self.worker.run())
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            event = await self._feed.get()
            if event.get("type") in TERMINAL:
                future = self.done.get(event["run_id"])
                if future is not None and not future.done():
                    future.set_result(event["type"])

    async def run(self, n_steps: int) -> str:
        run_id = await self.store.create_run(spec_for(n_steps), "go")
        self.done[run_id] = asyncio.get_running_loop().create_future()
        self.worker.wake()
        outcome = await asyncio.wait_for(self.done[run_id], 300)
        if outcome != "run.completed":
            raise RuntimeError(f"run {run_id} ended with {outcome}")
        return run_id

    async def burst(self, n_runs: int, n_steps: int) -> list[str]:
        return list(await asyncio.gather(*(self.run(n_steps) for _ in range(n_runs))))

    async def stop(self) -> None:
        self.worker.stop()
        if self.task is not None:
            await self.task
        if self._reader is not None:
            self._reader.cancel()


async def verify(store: Store, run_id: str, n_steps: int) -> str:
    events = await store.load_events(run_id)
    tools = [e for e in events if e.type == "tool.completed"]
    llms = [e for e in events if e.type == "llm.completed"]
    if len(tools) != n_steps // 2 or len(llms) != n_steps // 2 + 1:
        raise AssertionError(f"{run_id}: {len(tools)} tool results, {len(llms)} answers")
    last = json.loads(tools[-1].data["output"])
    common.check_counter(last["step"], n_steps // 2 - 1, "last step")
    return f"{len(tools) + len(llms)} journaled steps in the last run"


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", choices=("sqlite", "pg"), required=True)
    args = parser.parse_args()
    if args.store == "sqlite":
        url = f"sqlite:///{common.workdir('everruns-sqlite')}/everruns.db"
        floor = "floor-sqlite-wal-full"
        storage = "SQLite WAL, synchronous=FULL"
    else:
        db = "peerbench_everruns"
        url = common.fresh_pg_database(db)
        floor = "floor-pg"
        storage = common.pg_settings(url)
    store = await Store.open(url)
    harness = Harness(store)
    await harness.start()
    try:
        seq = await common.atime_sequential(harness.run)
        last = await harness.run(common.N)
        verified = await verify(store, last, common.N)
        conc = await common.atime_concurrent(harness.burst)
    finally:
        await harness.stop()
        await store.close()
        if args.store == "pg":
            common.drop_pg_database("peerbench_everruns")
    common.emit(
        f"everruns-{args.store}",
        framework="everruns",
        storage=storage,
        seq_ms=seq,
        conc_sps=conc,
        verified=verified,
        notes="in-process Worker; a step = one journaled LLM call or tool call",
        floor=floor,
    )
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # the tool module
    os.environ.setdefault("EVERRUNS_LOG", "warning")
    started = time.perf_counter()
    sys.exit(asyncio.run(main()))
