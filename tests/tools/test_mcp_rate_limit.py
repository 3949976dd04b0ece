"""A `rate_limit:` on an MCP tool entry is one budget for the whole fleet.

One real MCP server process (tests/tooling/gauge_mcp.py, streamable HTTP on a free
loopback port) that every worker connects to and that records, for each call, how many
calls were running when it arrived. Two runs on two worker processes each ask for
three calls at once; the entry's `rate_limit: {concurrency: 1}` must keep the server at
one call at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from everruns.core.events import Event, EventType
from everruns.spec import load_spec
from everruns.store import Store
from helpers import TOOLING, env_for, free_port, start_worker, stop, write_agent

pytestmark = pytest.mark.timeout(60)

WORKER_ARGS = ("--lease-ttl", "1", "--poll-interval", "0.1", "--concurrency", "1")
HOLD = 0.4  # seconds each call holds the server


def start_gauge(tmp: Path, ledger: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    with open(tmp / "gauge.log", "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, str(TOOLING / "gauge_mcp.py"), str(port), str(ledger)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return proc, f"http://127.0.0.1:{port}/mcp"


def wait_listening(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise AssertionError(f"the gauge MCP server did not listen: {log.read_text()}")


async def finished(store: Store, run_id: str) -> list[Event]:
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        events = await store.load_events(run_id)
        if events[-1].type in (EventType.RUN_COMPLETED, EventType.RUN_FAILED):
            assert events[-1].type == EventType.RUN_COMPLETED, events[-1].data
            return events
        await asyncio.sleep(0.05)
    raise AssertionError(f"run {run_id} did not finish: {[e.type for e in events]}")


async def test_two_workers_share_an_mcp_tool_concurrency_limit(tmp_path: Path, db_url: str) -> None:
    ledger = tmp_path / "gauge.jsonl"
    gauge, url = start_gauge(tmp_path, ledger)
    calls = [{"name": "gauge", "arguments": {"label": f"c{i}", "hold": HOLD}} for i in range(3)]
    spec = write_agent(
        tmp_path / "gauged.yaml",
        [{"tool_calls": calls}, {"text": "all gauged"}],
        [
            {
                "mcp": {"url": url, "include": ["gauge"]},
                "effect": "idempotent",
                "rate_limit": {"key": "gauge-mcp", "concurrency": 1},
            }
        ],
        max_parallel_tools=3,
    )
    env = env_for(db_url, EVERRUNS_WORKSPACE_ROOT=str(tmp_path / "ws"))
    store = await Store.open(db_url)
    workers: list[subprocess.Popen[bytes]] = []
    try:
        # The workers start while the server starts and the runs are created (each worker
        # takes one run: --concurrency 1).
        for n in (1, 2):
            log = tmp_path / f"worker-{n}.log"
            workers.append(start_worker(env, *WORKER_ARGS, cwd=tmp_path, log=log))
        runs = [await store.create_run(load_spec(spec), "go") for _ in range(2)]
        wait_listening(gauge, url, tmp_path / "gauge.log")
        journals = [await finished(store, run_id) for run_id in runs]

        # The two runs ran on the two workers, at the same time.
        owners = {
            next(e for e in es if e.type == EventType.RUN_STARTED).data["worker"] for es in journals
        }
        assert len(owners) == 2, owners
        for es in journals:
            done = [e for e in es if e.type == EventType.TOOL_COMPLETED]
            assert sorted(e.data["output"] for e in done) == [
                "gauged c0",
                "gauged c1",
                "gauged c2",
            ]
        # The server never saw two calls at once: each arrived after the previous ended.
        seen = sorted(
            (json.loads(line) for line in ledger.read_text().splitlines()),
            key=lambda e: e["start"],
        )
        assert len(seen) == 6, seen
        assert max(e["in_flight"] for e in seen) == 1, seen
        for before, after in itertools.pairwise(seen):
            assert after["start"] >= before["end"], (before, after)
    finally:
        for proc in workers:
            stop(proc)
        stop(gauge)
        await store.close()
