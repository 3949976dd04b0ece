"""The data-processing and code-migration use cases (examples/agents), end to end and
offline, each with a worker SIGKILLed midway and a second worker finishing the run."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from everruns.core.events import Event, EventType
from everruns.engine.artifacts import run_file_contents
from everruns.store import Store
from helpers import TOOLING, cli, env_for, start_worker, stop

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
sys.path.insert(0, str(EXAMPLES))

from data_processing.api import EnrichAPI  # noqa: E402
from data_processing.run import make_records  # noqa: E402

pytestmark = pytest.mark.timeout(180)
WORKER_ARGS = ("--lease-ttl", "1", "--poll-interval", "0.1")


def environment(tmp: Path, db_url: str, **extra: str) -> dict[str, str]:
    settings = tmp / "settings.yaml"
    settings.write_text("sandbox: none\n")  # the shell runs unconfined where bwrap is missing
    return env_for(
        db_url,
        PYTHONPATH=f"{EXAMPLES}{os.pathsep}{TOOLING}",
        EVERRUNS_SETTINGS=str(settings),
        EVERRUNS_WORKSPACE_ROOT=str(tmp / "workspaces"),
        **extra,
    )


async def wait_for(
    store: Store, run_id: str, check: Callable[[list[Event]], bool], what: str
) -> list[Event]:
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        events = await store.load_events(run_id)
        if check(events):
            return events
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}: {[e.type for e in events]}")


def ended(events: list[Event]) -> bool:
    return events[-1].type in (EventType.RUN_COMPLETED, EventType.RUN_FAILED)


async def kill_midway_and_finish(
    tmp: Path, env: dict[str, str], store: Store, run_id: str, midway: Callable[[list[Event]], bool]
) -> list[Event]:
    logs = [tmp / "worker-1.log", tmp / "worker-2.log"]
    first = start_worker(env, *WORKER_ARGS, cwd=tmp, log=logs[0])
    try:
        await wait_for(store, run_id, midway, "midway")
        stop(first, signal.SIGKILL)
        second = start_worker(env, *WORKER_ARGS, cwd=tmp, log=logs[1])
        try:
            events = await wait_for(store, run_id, ended, "the end")
        finally:
            stop(second)
    finally:
        stop(first, signal.SIGKILL)
    assert events[-1].type == EventType.RUN_COMPLETED, (
        events[-1].data,
        [log.read_text()[-2000:] for log in logs],
    )
    assert [e.data.get("takeover") for e in events if e.type == EventType.RUN_STARTED][-1]
    return events


async def test_data_processing_survives_a_sigkill_with_every_record_once(
    tmp_path: Path, sqlite_url: str
) -> None:
    api = EnrichAPI(retry_after=1.0)
    threading.Thread(target=api.serve_forever, daemon=True).start()
    env = environment(tmp_path, sqlite_url, DATAPROC_API=api.url)
    records = make_records(tmp_path / "records.csv", 200)
    spec = EXAMPLES / "agents" / "data-processing.yaml"
    started = time.monotonic()
    store = await Store.open(sqlite_url)
    try:
        result = cli(
            "start", str(spec), "-i", "Enrich records.csv", "--file", str(records), env=env
        )
        assert result.returncode == 0, result.stderr
        run_id = result.stdout.strip()

        def midway(events: list[Event]) -> bool:
            return sum(e.type == EventType.TOOL_COMPLETED for e in events) >= 6

        events = await kill_midway_and_finish(tmp_path, env, store, run_id, midway)
        wall = time.monotonic() - started
        stats = api.summary()
        assert stats["records"] == 200 and stats["processed_more_than_once"] == 0, stats
        assert stats["429"] > 0 and stats["503"] > 0, stats
        retries = [e for e in events if e.type == EventType.TOOL_RETRYING]
        assert len(retries) >= stats["429"] + stats["503"] - 1  # one may die with the worker
        results = (await run_file_contents(store, run_id))["results.csv"].decode().splitlines()
        assert results[0] == "id,name,city,score,region" and len(results) == 201
        assert sorted(int(line.split(",")[0]) for line in results[1:]) == list(range(1, 201))
        row = await store.get_run(run_id)
        assert 0 < row.cost_usd <= 0.10  # within the spec's budget
        assert row.progress == {"done": 200, "total": 200, "note": "200 of 200 records enriched"}
        print(
            f"\ndata-processing: records={stats['records']} 429s={stats['429']} "
            f"503s={stats['503']} retries={len(retries)} requests={stats['requests']} "
            f"replayed={stats.get('replayed', 0)} wall={wall:.1f}s cost=${row.cost_usd:.4f}"
        )
    finally:
        api.shutdown()
        await store.close()


async def test_code_migration_survives_a_sigkill_and_the_export_passes_its_tests(
    tmp_path: Path, sqlite_url: str
) -> None:
    env = environment(tmp_path, sqlite_url)
    spec = EXAMPLES / "agents" / "code-migration.yaml"
    legacy = EXAMPLES / "code_migration" / "legacy"
    store = await Store.open(sqlite_url)
    try:
        result = cli("start", str(spec), "-i", "Migrate", "--dir", str(legacy), env=env)
        assert result.returncode == 0, result.stderr
        run_id = result.stdout.strip()

        def midway(events: list[Event]) -> bool:  # the first edit is journaled
            return any(
                e.type == EventType.TOOL_COMPLETED and e.data["call_id"] == "call_2_1"
                for e in events
            )

        events = await kill_midway_and_finish(tmp_path, env, store, run_id, midway)
        shells = [
            e.data["output"]
            for e in events
            if e.type == EventType.TOOL_COMPLETED and e.data["name"] == "shell"
        ]
        assert "FAILED" in shells[0] and "OK" in shells[-1], shells
        files = await run_file_contents(store, run_id)
        assert not [p for p in files if "__pycache__" in p or p.endswith(".pyc")]
        target = tmp_path / "migrated"
        exported = cli("workspace", run_id, "--export", str(target), env=env)
        assert exported.returncode == 0, exported.stderr
        tests = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "unittest", "discover", "-s", "tests", "-t", "."],
            cwd=target,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert tests.returncode == 0, tests.stderr
        assert "totalValue" not in (target / "inventory" / "report.py").read_text()
    finally:
        await store.close()
