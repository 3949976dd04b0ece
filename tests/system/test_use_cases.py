"""The data-processing and code-migration use cases (examples/agents), end to end and
offline, on SQLite and PostgreSQL: two worker processes, the one running the run
SIGKILLed midway, the other taking it over and finishing it.

Both workers start before the run is created, so their start-up overlaps the CLI's and
the survivor is already polling when the lease of the dead one expires (1 s). The
example API answers 429/503 with a short `Retry-After` (0.3 s) in the test; the test
checks it is honoured at the server (no retry of a key before it). The data-processing
numbers of each run are printed in the terminal summary ("use-case numbers").
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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
RETRY_AFTER = 0.3  # seconds, what the example API asks for in its 429s and 503s here


# ------------------------------------------------------------------ numbers in the summary


@pytest.fixture
def numbers(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Adds a line to the terminal summary's "use-case numbers" section (tests/conftest.py
    collects it from the test's report, so it also reaches the summary under xdist)."""

    def add(line: str) -> None:
        print(f"\n{line}")
        request.node.user_properties.append(("use-case numbers", line))

    return add


# ------------------------------------------------------------------ two workers, one killed


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


def pid_of(worker_id: str) -> int:
    """A worker id is `host-pid-suffix` (engine/worker.py); host may contain dashes."""
    return int(worker_id.rsplit("-", 2)[1])


class Pair:
    """Two worker processes on one database; `kill_holder` SIGKILLs the one running a run."""

    def __init__(self, tmp: Path, env: dict[str, str]):
        self.logs = [tmp / "worker-1.log", tmp / "worker-2.log"]
        self.procs = [start_worker(env, *WORKER_ARGS, cwd=tmp, log=log) for log in self.logs]

    async def kill_holder(self, store: Store, run_id: str) -> subprocess.Popen[bytes]:
        for _ in range(400):
            owner = (await store.get_run(run_id)).lease_owner
            if owner is not None:
                break
            await asyncio.sleep(0.02)
        assert owner is not None, "nobody holds the run"
        (victim,) = [p for p in self.procs if p.pid == pid_of(owner)]
        stop(victim, signal.SIGKILL)
        return victim

    def tails(self) -> list[str]:
        return [log.read_text(errors="replace")[-2000:] for log in self.logs]

    def close(self) -> None:
        for proc in self.procs:
            stop(proc)


@pytest.fixture
def workers(tmp_path: Path, db_url: str) -> Iterator[Callable[[dict[str, str]], Pair]]:
    pairs: list[Pair] = []

    def start(env: dict[str, str]) -> Pair:
        pairs.append(Pair(tmp_path, env))
        return pairs[-1]

    yield start
    for pair in pairs:
        pair.close()


async def wait_for(
    store: Store, run_id: str, check: Callable[[list[Event]], bool], what: str
) -> list[Event]:
    deadline = time.monotonic() + 150
    events: list[Event] = []
    while time.monotonic() < deadline:
        events = await store.load_events(run_id)
        if check(events):
            return events
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}: {[e.type for e in events]}")


def ended(events: list[Event]) -> bool:
    return bool(events) and events[-1].type in (EventType.RUN_COMPLETED, EventType.RUN_FAILED)


async def kill_midway_and_finish(
    pair: Pair, store: Store, run_id: str, midway: Callable[[list[Event]], bool]
) -> list[Event]:
    await wait_for(store, run_id, midway, "midway")
    victim = await pair.kill_holder(store, run_id)
    events = await wait_for(store, run_id, ended, "the end")
    assert events[-1].type == EventType.RUN_COMPLETED, (events[-1].data, pair.tails())
    started = [e for e in events if e.type == EventType.RUN_STARTED]
    assert pid_of(started[0].data["worker"]) == victim.pid
    assert started[-1].data["takeover"] and pid_of(started[-1].data["worker"]) != victim.pid
    return events


def of(events: list[Event], kind: str) -> list[Event]:
    return [e for e in events if e.type == kind]


# ------------------------------------------------------------------ the use cases


async def test_data_processing_survives_a_sigkill_with_every_record_once(
    tmp_path: Path, db_url: str, workers: Callable[[dict[str, str]], Pair], numbers: Any
) -> None:
    api = EnrichAPI(retry_after=RETRY_AFTER)
    threading.Thread(target=api.serve_forever, daemon=True).start()
    env = environment(tmp_path, db_url, DATAPROC_API=api.url)
    records = make_records(tmp_path / "records.csv", 200)
    spec = EXAMPLES / "agents" / "data-processing.yaml"
    started = time.monotonic()
    store = await Store.open(db_url)
    try:
        pair = workers(env)
        result = cli(
            "start", str(spec), "-i", "Enrich records.csv", "--file", str(records), env=env
        )
        assert result.returncode == 0, result.stderr
        run_id = result.stdout.strip()

        def midway(events: list[Event]) -> bool:
            return len(of(events, EventType.TOOL_COMPLETED)) >= 6

        events = await kill_midway_and_finish(pair, store, run_id, midway)
        wall = time.monotonic() - started
        stats = api.summary()
        assert stats["records"] == 200 and stats["processed_more_than_once"] == 0, stats
        assert stats.get("429", 0) > 0 and stats.get("503", 0) > 0, (stats, api.arrivals_by_key())
        retries = of(events, EventType.TOOL_RETRYING)
        assert len(retries) >= stats["429"] + stats["503"] - 1  # one may die with the worker
        # Retry-After is honoured: no key is tried again before the server said it may be.
        for key, times in api.arrivals_by_key().items():
            gaps = [b - a for a, b in itertools.pairwise(times)]
            assert all(gap >= RETRY_AFTER - 0.01 for gap in gaps), (key, times)
        for retry in retries:  # and the journal agrees: the next attempt starts after retry_at
            again = next(
                e
                for e in of(events, EventType.TOOL_STARTED)
                if e.seq > retry.seq and e.data["call_id"] == retry.data["call_id"]
            )
            assert again.ts >= retry.data["retry_at"] - 0.01
        results = (await run_file_contents(store, run_id))["results.csv"].decode().splitlines()
        assert results[0] == "id,name,city,score,region" and len(results) == 201
        assert sorted(int(line.split(",")[0]) for line in results[1:]) == list(range(1, 201))
        row = await store.get_run(run_id)
        assert 0 < row.cost_usd <= 0.10  # within the spec's budget
        assert row.progress == {"done": 200, "total": 200, "note": "200 of 200 records enriched"}
        database = "postgresql" if db_url.startswith("postgres") else "sqlite"
        numbers(
            f"data-processing [{database}]: records={stats['records']} "
            f"processed_twice={stats['processed_more_than_once']} 429s={stats['429']} "
            f"503s={stats['503']} retries={len(retries)} requests={stats['requests']} "
            f"replayed={stats.get('replayed', 0)} wall={wall:.1f}s cost=${row.cost_usd:.4f}"
        )
    finally:
        api.shutdown()
        await store.close()


async def test_code_migration_survives_a_sigkill_and_the_export_passes_its_tests(
    tmp_path: Path, db_url: str, workers: Callable[[dict[str, str]], Pair]
) -> None:
    env = environment(tmp_path, db_url)
    spec = EXAMPLES / "agents" / "code-migration.yaml"
    legacy = EXAMPLES / "code_migration" / "legacy"
    store = await Store.open(db_url)
    try:
        pair = workers(env)
        result = cli("start", str(spec), "-i", "Migrate", "--dir", str(legacy), env=env)
        assert result.returncode == 0, result.stderr
        run_id = result.stdout.strip()

        def midway(events: list[Event]) -> bool:  # the first edit is journaled
            return any(
                e.type == EventType.TOOL_COMPLETED and e.data["call_id"] == "call_2_1"
                for e in events
            )

        events = await kill_midway_and_finish(pair, store, run_id, midway)
        shells = [
            e.data["output"]
            for e in of(events, EventType.TOOL_COMPLETED)
            if e.data["name"] == "shell"
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
