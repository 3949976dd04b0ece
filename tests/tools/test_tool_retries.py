"""Durable tool retries and fleet-wide tool rate limits, end to end.

Real worker and CLI processes, scripted agents, a real HTTP server on a loopback
port (a thread of this test) that records when each request arrived.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from everruns.core.events import Event, EventType
from everruns.core.state import fold, transcript
from everruns.store import Store
from helpers import cli, env_for, read_ledger, start_worker, stop, write_agent

pytestmark = pytest.mark.timeout(90)

WORKER_ARGS = ("--lease-ttl", "1", "--poll-interval", "0.1")


class Fleet:
    """One database, worker processes and settings that allow loopback HTTP."""

    def __init__(self, tmp: Path, db_url: str, store: Store):
        self.tmp = tmp
        self.db_url = db_url
        self.store = store
        self.ledger = tmp / "ledger.jsonl"
        self.settings = tmp / "settings.yaml"
        self.settings.write_text("allow_private_networks: true\n")
        self.workers: list[tuple[subprocess.Popen[bytes], Path]] = []

    def env(self) -> dict[str, str]:
        return env_for(
            self.db_url,
            EVERRUNS_TEST_LEDGER=str(self.ledger),
            EVERRUNS_SETTINGS=str(self.settings),
            EVERRUNS_WORKSPACE_ROOT=str(self.tmp / "workspaces"),
        )

    def start(self, spec: Path) -> str:
        result = cli("start", str(spec), "--input", "go", env=self.env(), cwd=self.tmp)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def worker(self) -> subprocess.Popen[bytes]:
        log = self.tmp / f"worker-{len(self.workers) + 1}.log"
        proc = start_worker(self.env(), *WORKER_ARGS, cwd=self.tmp, log=log)
        self.workers.append((proc, log))
        return proc

    def logs(self) -> str:
        return "\n".join(log.read_text(errors="replace")[-2000:] for _p, log in self.workers)

    async def events(self, run_id: str) -> list[Event]:
        return await self.store.load_events(run_id)

    async def wait(self, run_id: str, check: Callable[[list[Event]], bool], what: str) -> None:
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline:
            if check(await self.events(run_id)):
                return
            await asyncio.sleep(0.05)
        types = [e.type for e in await self.events(run_id)]
        raise AssertionError(f"timed out waiting for {what}: {types}\n{self.logs()}")

    async def completed(self, run_id: str) -> list[Event]:
        await self.wait(
            run_id, lambda es: es[-1].type in ("run.completed", "run.failed"), "the end"
        )
        events = await self.events(run_id)
        assert events[-1].type == EventType.RUN_COMPLETED, events[-1].data
        return events

    def close(self) -> None:
        for proc, _log in self.workers:
            stop(proc, timeout=15)


def call(name: str, **arguments: Any) -> dict[str, Any]:
    return {"name": name, "arguments": arguments}


def of(events: list[Event], kind: str) -> list[Event]:
    return [e for e in events if e.type == kind]


# ------------------------------------------------------------------ RetryLater


async def test_retry_later_releases_the_lease_and_another_worker_retries(
    tmp_path: Path, db_url: str
) -> None:
    spec = write_agent(
        tmp_path / "flaky.yaml",
        [{"tool_calls": [call("flaky_once", key="k1", after=3)]}, {"text": "finished"}],
        ["retrytools:flaky_once"],
        retry={"durable_wait_after": 1},
    )
    store = await Store.open(db_url)
    fleet = Fleet(tmp_path, db_url, store)
    try:
        run_id = fleet.start(spec)
        first = fleet.worker()
        await fleet.wait(
            run_id, lambda es: any(e.type == EventType.RUN_WAITING for e in es), "the park"
        )
        for _ in range(200):  # the lease is released right after run.waiting is journaled
            row = await store.get_run(run_id)
            if row.lease_owner is None:
                break
            await asyncio.sleep(0.02)
        assert row.status == "waiting" and row.lease_owner is None  # no worker held
        assert row.wake_at is not None and row.wake_at > time.time()  # parked, not running
        stop(first, signal.SIGKILL)
        events = await fleet.events(run_id)
        (retrying,) = of(events, EventType.TOOL_RETRYING)
        assert retrying.data["attempt"] == 1
        assert retrying.data["reason"] == "upstream busy"
        assert retrying.data["retry_at"] - retrying.ts >= 2.9
        assert retrying.data["progress"] == {"done": 1, "total": 2, "note": "attempt 1"}
        assert of(events, EventType.RUN_WAITING)[-1].data["reason"] == "tool_retry"
        fleet.worker()
        events = await fleet.completed(run_id)
        started = of(events, EventType.TOOL_STARTED)
        assert [e.data["attempt"] for e in started] == [1, 2]
        assert started[1].ts >= retrying.data["retry_at"]
        (done,) = of(events, EventType.TOOL_COMPLETED)
        assert done.data["output"] == "done k1 on attempt 2"
        assert done.data["progress"]["done"] == 2
        entries = read_ledger(fleet.ledger)
        assert [e["attempt"] for e in entries] == [1, 2]
        assert entries[0]["idempotency_key"] == entries[1]["idempotency_key"]
        assert entries[0]["pid"] != entries[1]["pid"]  # the second worker retried it
        assert fold(events).progress == done.data["progress"]
        assert (await store.get_run(run_id)).progress == done.data["progress"]  # the row
        status = cli("status", run_id, env=fleet.env(), cwd=tmp_path)
        assert "2 of 2 (100%) · attempt 2" in status.stdout, status.stdout
    finally:
        fleet.close()
        await store.close()


# ------------------------------------------------------------------ http built-in


class Recorder(ThreadingHTTPServer):
    """A loopback API: `answers` is consumed per request (status, headers); then 200."""

    def __init__(self, answers: list[tuple[int, dict[str, str]]], delay: float = 0.0):
        self.answers = list(answers)
        self.arrivals: list[float] = []
        self.delay = delay
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: Recorder

    def do_GET(self) -> None:
        with self.server.lock:
            self.server.arrivals.append(time.time())
            status, headers = self.server.answers.pop(0) if self.server.answers else (200, {})
            self.server.in_flight += 1
            self.server.max_in_flight = max(self.server.max_in_flight, self.server.in_flight)
        time.sleep(self.server.delay)
        with self.server.lock:
            self.server.in_flight -= 1
        body = json.dumps({"status": status, "path": self.path}).encode()
        self.send_response(status)
        for name, value in {**headers, "Content-Type": "application/json"}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


async def test_http_builtin_honours_retry_after_and_the_model_sees_only_success(
    tmp_path: Path, db_url: str
) -> None:
    server = Recorder([(429, {"Retry-After": "2"}), (503, {"Retry-After": "1"})])
    spec = write_agent(
        tmp_path / "http.yaml",
        [{"tool_calls": [call("http", method="GET", url=f"{server.url}/item/1")]}, {"text": "ok"}],
        [{"builtin": "http", "retry": {"max_attempts": 4, "initial_backoff": 0.2}}],
    )
    store = await Store.open(db_url)
    fleet = Fleet(tmp_path, db_url, store)
    try:
        run_id = fleet.start(spec)
        fleet.worker()
        events = await fleet.completed(run_id)
        first, second, third = server.arrivals
        assert second - first >= 2.0
        assert third - second >= 1.0
        retries = of(events, EventType.TOOL_RETRYING)
        assert [e.data["attempt"] for e in retries] == [1, 2]
        assert "HTTP 429" in retries[0].data["reason"]
        tool_messages = [m for m in transcript(fold(events)) if m["role"] == "tool"]
        assert len(tool_messages) == 1
        seen = json.loads(tool_messages[0]["content"])  # the response the model got
        assert seen["status"] == 200 and json.loads(seen["body"])["status"] == 200
    finally:
        fleet.close()
        server.shutdown()
        await store.close()


# ------------------------------------------------------------------ rate limits


async def test_two_workers_share_a_tool_rate_limit(tmp_path: Path, db_url: str) -> None:
    """rpm 120 (the 60 s window scaled to 0.5 s per request) and one call at a time,
    across two runs on two workers, each asking for four calls at once."""
    server = Recorder([], delay=0.6)
    limit = {"key": "test-api", "rpm": 120, "concurrency": 1}
    calls = [call("http", method="GET", url=f"{server.url}/r{i}") for i in range(4)]
    spec = write_agent(
        tmp_path / "limited.yaml",
        [{"tool_calls": calls}, {"text": "all fetched"}],
        [{"builtin": "http", "rate_limit": limit}],
        retry={"durable_wait_after": 1},
    )
    store = await Store.open(db_url)
    fleet = Fleet(tmp_path, db_url, store)
    try:
        runs = [fleet.start(spec), fleet.start(spec)]
        fleet.worker()
        fleet.worker()
        journals = [await fleet.completed(run_id) for run_id in runs]
        arrivals = sorted(server.arrivals)
        assert len(arrivals) == 8
        assert server.max_in_flight == 1  # concurrency: 1, fleet-wide
        # Never more than n requests in any window of n * 0.5 s: the (n+1)-th comes
        # one window later (less the spread of loopback delivery on a loaded machine).
        for n in (1, 2, 4):
            for i in range(len(arrivals) - n):
                assert arrivals[i + n] - arrivals[i] >= n * 0.5 - 0.2, (n, arrivals)
        limited = [
            e
            for es in journals
            for e in of(es, EventType.TOOL_RETRYING)
            if e.data["reason"] == "rate_limited"
        ]
        assert limited, "a call over the budget waits durably (tool.retrying)"
        assert all(e.data["attempt"] == 0 for e in limited)  # no attempt was used up
        for es in journals:
            assert len(of(es, EventType.TOOL_COMPLETED)) == 4
            assert len(of(es, EventType.TOOL_STARTED)) == 4
    finally:
        fleet.close()
        server.shutdown()
        await store.close()
