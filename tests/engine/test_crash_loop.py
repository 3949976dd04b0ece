"""A run whose step kills every worker that tries it is stopped, not retried forever."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from everruns.core.events import Event
from everruns.store import Store
from helpers import cli, env_for, read_ledger, start_worker, stop, write_agent


def test_poison_tool_fails_the_run_after_max_crashes(tmp_path: Path, db_url: str) -> None:
    ledger = tmp_path / "ledger"
    spec = write_agent(
        tmp_path / "poison.yaml",
        [
            {"tool_calls": [{"name": "pure_record", "arguments": {"key": "boom"}}]},
            {"text": "never"},
        ],
        ["ledgertools:pure_record"],
    )
    env = env_for(db_url, EVERRUNS_TEST_LEDGER=str(ledger))
    run_id = cli("start", str(spec), "--input", "go", env=env).stdout.strip()
    poisoned = {**env, "EVERRUNS_CRASH_AT": "tool.mid"}  # every worker dies inside the tool
    deaths = 0
    for _ in range(6):
        worker = start_worker(
            poisoned, "--lease-ttl", "1", "--poll-interval", "0.1", "--max-crashes", "2"
        )
        deadline = time.monotonic() + 60
        status = "running"
        while worker.poll() is None and time.monotonic() < deadline:
            status = json.loads(cli("status", run_id, "--json", env=env).stdout)["status"]
            if status == "failed":
                break
            time.sleep(0.3)
        if worker.poll() == -9:
            deaths += 1
            continue
        stop(worker)
        break
    final = json.loads(cli("status", run_id, "--json", env=env).stdout)
    assert final["status"] == "failed", final
    assert final["error"]["reason"] == "crash_loop"
    # Two workers in a row died on the run (the second without any progress): the third
    # claim stops it instead of running the poison step again.
    assert deaths == 2, deaths
    assert len(read_ledger(ledger)) == 2  # the pure tool ran once per worker, then never again

    async def events() -> list[Event]:
        store = await Store.open(db_url)
        try:
            return await store.load_events(run_id)
        finally:
            await store.close()

    journal = asyncio.run(events())
    assert journal[-1].type == "run.failed"
    assert [e.type for e in journal].count("llm.completed") == 1
