#!/usr/bin/env python3
"""Engine benchmark: journal overhead per step, and throughput with 1 and 4 workers.

Run with `make bench` (see bench/README.md). Offline; the model is the scripted
provider with zero delay, the tool a no-op, so what is left is the engine: journal
appends, leases, fold/decide, and the worker loop.

  1. Overhead: one run of 201 steps (100 LLM answers that each call a tool, the 100
     tool calls, one final answer) executed in-process by `everruns.engine.worker.Worker`.
     Every committed event is timestamped as it is published; a step's wall time runs
     from the end of the previous step to the commit of this step's result.
  2. Throughput: 50 runs of 11 steps each, executed by 1 or 4 `everruns worker`
     processes (default concurrency), timed from the first claim to the last
     completion using the journal's own timestamps.

Both run on SQLite (a temporary file) and PostgreSQL (a scratch database created and
dropped here; skipped if the server is unreachable).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa

from everruns import tool
from everruns.engine.broker import Broker
from everruns.engine.worker import Worker
from everruns.spec import AgentSpec, parse_spec
from everruns.store import Store
from everruns.store.schema import events, runs, workers

BENCH_DIR = Path(__file__).resolve().parent
EVERRUNS = str(Path(sys.executable).parent / "everruns")
PG_ADMIN_URL = (
    os.environ.get("EVERRUNS_BENCH_POSTGRES_URL")
    or os.environ.get("EVERRUNS_TEST_POSTGRES_URL")
    or "postgresql://postgres@127.0.0.1:5432/test"
)

OVERHEAD_TOOL_STEPS = 100  # LLM answers that call the tool; 2 steps each, + 1 final answer
THROUGHPUT_RUNS = 50
THROUGHPUT_TOOL_STEPS = 5  # 11 steps per run
WORKER_COUNTS = (1, 4)
RUN_TIMEOUT = 120.0
TERMINAL = ("completed", "failed", "cancelled")
TERMINAL_EVENTS = ("run.completed", "run.failed", "run.cancelled")


@tool(effect="pure")
async def noop(i: int) -> str:
    """Return the number it was given (the benchmark's trivial tool)."""
    return str(i)


def agent(name: str, tool_steps: int) -> AgentSpec:
    """A scripted agent: `tool_steps` answers calling `noop`, then a final text answer."""
    usage = {"input_tokens": 10, "output_tokens": 5}  # fixed, so no token estimation runs
    responses: list[dict[str, Any]] = [
        {"tool_calls": [{"name": "noop", "arguments": {"i": i}}], "usage": usage}
        for i in range(tool_steps)
    ]
    responses.append({"text": "done", "usage": usage})
    return parse_spec(
        {
            "name": name,
            "model": {"provider": "scripted", "responses": responses},
            "tools": [{"python": "bench_engine:noop"}],
            "limits": {"max_steps": 10 * (tool_steps + 1)},
        }
    )


# ---------------------------------------------------------------- databases


@contextlib.contextmanager
def sqlite_db(tmp: Path, name: str) -> Iterator[str]:
    yield f"sqlite:///{tmp / f'{name}.db'}"


def pg_problem() -> str | None:
    try:
        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return None
    except Exception as exc:
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


@contextlib.contextmanager
def pg_db(_tmp: Path, _name: str) -> Iterator[str]:
    """A scratch database, dropped afterwards even if the benchmark fails."""
    db = f"everruns_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    try:
        yield f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{db}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


# ---------------------------------------------------------------- 1. overhead


class TimingBroker(Broker):
    """Records when each durable event is published, i.e. right after its commit."""

    def __init__(self) -> None:
        super().__init__()
        self.marks: list[tuple[float, str]] = []

    def publish(self, run_id: str, event: dict[str, Any]) -> None:
        if not event.get("ephemeral"):
            self.marks.append((time.perf_counter(), event["type"]))
        super().publish(run_id, event)


async def execute_in_process(store: Store, spec: AgentSpec) -> list[tuple[float, str]]:
    run_id = await store.create_run(spec, "go")
    broker = TimingBroker()
    worker = Worker(
        store, concurrency=1, lease_ttl=30, poll_interval=0.01, broker=broker, only=[run_id]
    )
    done = broker.subscribe(run_id)
    task = asyncio.create_task(worker.run())
    try:
        while True:
            event = await asyncio.wait_for(done.get(), RUN_TIMEOUT)
            if event["type"] in TERMINAL_EVENTS:
                break
    finally:
        worker.stop()
        await task
    if event["type"] != "run.completed":
        raise RuntimeError(f"overhead run ended with {event['type']}: {event['data']}")
    return broker.marks


def percentile(values: list[float], pct: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1]


async def overhead(url: str) -> dict[str, Any]:
    store = await Store.open(url)
    try:
        await execute_in_process(store, agent("warmup", 3))  # imports, connections, caches
        started = time.perf_counter()
        marks = await execute_in_process(store, agent("overhead", OVERHEAD_TOOL_STEPS))
        wall = time.perf_counter() - started
    finally:
        await store.close()
    # A step ends when its result is committed: llm.completed or tool.completed
    # (each answer calls one tool). The first step is timed from run.started.
    begin = next(t for t, kind in marks if kind == "run.started")
    ends = [t for t, kind in marks if kind in ("llm.completed", "tool.completed")]
    steps = [b - a for a, b in zip([begin, *ends], ends, strict=False)]
    appends = [b - a for (a, _), (b, _) in itertools.pairwise(marks)]
    return {
        "steps": len(steps),
        "events": len(marks),
        "step_p50": statistics.median(steps) * 1000,
        "step_p95": percentile(steps, 95) * 1000,
        "event_p50": statistics.median(appends) * 1000,
        "event_p95": percentile(appends, 95) * 1000,
        "wall": wall,
    }


# ---------------------------------------------------------------- 2. throughput


async def set_wake(store: Store, wake_at: float | None) -> None:
    async with store.engine.begin() as conn:
        await conn.execute(sa.update(runs).values(wake_at=wake_at))


async def scalar(store: Store, query: Any) -> Any:
    async with store.engine.connect() as conn:
        return (await conn.execute(query)).scalar()


def spawn_workers(url: str, n: int, log_dir: Path) -> list[subprocess.Popen[bytes]]:
    """`everruns worker` processes; they import the tool from bench/ via PYTHONPATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCH_DIR), env.get("PYTHONPATH")]))
    env.pop("EVERRUNS_CRASH_AT", None)
    procs = []
    for i in range(n):
        with open(log_dir / f"worker-{n}-{i}.log", "wb") as log:
            cmd = [EVERRUNS, "worker", "--db", url]
            procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=log))
    return procs


def stop_workers(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # graceful: finish atoms, release leases
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def log_tail(log_dir: Path, lines: int = 15) -> str:
    parts = []
    for log in sorted(log_dir.glob("worker-*.log")):
        text = log.read_text(errors="replace").splitlines()[-lines:]
        parts.append(f"--- {log.name}\n" + "\n".join(text))
    return "\n".join(parts)


async def throughput(url: str, n_workers: int, log_dir: Path) -> dict[str, Any]:
    store = await Store.open(url)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        spec = agent("throughput", THROUGHPUT_TOOL_STEPS)
        for _ in range(THROUGHPUT_RUNS):
            await store.create_run(spec, "go")
        await set_wake(store, None)  # hold the runs back until every worker is up

        procs = spawn_workers(url, n_workers, log_dir)
        deadline = time.monotonic() + 60
        live = sa.select(sa.func.count()).select_from(workers).where(workers.c.stopped_at.is_(None))
        while await scalar(store, live) < n_workers:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError("workers did not start")
            await asyncio.sleep(0.05)

        await set_wake(store, time.time())  # go
        unfinished = (
            sa.select(sa.func.count()).select_from(runs).where(runs.c.status.not_in(TERMINAL))
        )
        deadline = time.monotonic() + RUN_TIMEOUT
        while await scalar(store, unfinished):
            if time.monotonic() > deadline:
                raise RuntimeError(f"runs did not finish in {RUN_TIMEOUT:g}s")
            await asyncio.sleep(0.1)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}\n{log_tail(log_dir)}") from None
    finally:
        stop_workers(procs)

    try:
        async with store.engine.connect() as conn:
            counts = dict(
                (
                    await conn.execute(
                        sa.select(events.c.type, sa.func.count()).group_by(events.c.type)
                    )
                ).all()
            )
            first_claim, last_done = (
                await conn.execute(
                    sa.select(
                        sa.func.min(events.c.ts).filter(events.c.type == "run.started"),
                        sa.func.max(events.c.ts).filter(events.c.type == "run.completed"),
                    )
                )
            ).one()
    finally:
        await store.close()
    if counts.get("run.completed") != THROUGHPUT_RUNS:
        raise RuntimeError(f"expected {THROUGHPUT_RUNS} completed runs, got {counts}")
    steps = counts.get("llm.completed", 0) + counts.get("tool.completed", 0)
    wall = last_done - first_claim
    return {
        "workers": n_workers,
        "runs": THROUGHPUT_RUNS,
        "steps": steps,
        "events": sum(counts.values()),
        "starts": counts.get("run.started", 0),
        "wall": wall,
        "steps_s": steps / wall,
        "runs_s": THROUGHPUT_RUNS / wall,
    }


# ---------------------------------------------------------------- main


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(
        h.ljust(w) if i == 0 else h.rjust(w)
        for i, (h, w) in enumerate(zip(headers, widths, strict=True))
    )
    out = [line, "-" * len(line)]
    for r in rows:
        out.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
    return "\n".join(out)


async def main() -> int:
    print(
        f"everruns engine benchmark: Python {platform.python_version()}, "
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
        flush=True,
    )
    backends: list[tuple[str, Any]] = [("sqlite", sqlite_db)]
    problem = pg_problem()
    if problem is None:
        backends.append(("postgresql", pg_db))
    else:
        print(f"PostgreSQL unreachable at {PG_ADMIN_URL} ({problem}): skipping it")

    over_rows: list[list[str]] = []
    thr_rows: list[list[str]] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="everruns-bench-") as tmpdir:
        tmp = Path(tmpdir)
        for backend, database in backends:
            print(f"[{time.monotonic() - started:5.1f}s] {backend}: overhead run", flush=True)
            with database(tmp, "overhead") as url:
                o = await overhead(url)
            over_rows.append(
                [
                    backend,
                    str(o["steps"]),
                    str(o["events"]),
                    f"{o['step_p50']:.2f}",
                    f"{o['step_p95']:.2f}",
                    f"{o['event_p50']:.2f}",
                    f"{o['event_p95']:.2f}",
                    f"{o['steps'] / o['wall']:.0f}",
                ]
            )
            for n in WORKER_COUNTS:
                print(
                    f"[{time.monotonic() - started:5.1f}s] {backend}: throughput, {n} worker(s)",
                    flush=True,
                )
                with database(tmp, f"throughput-{n}") as url:
                    t = await throughput(url, n, tmp)
                thr_rows.append(
                    [
                        backend,
                        str(t["workers"]),
                        str(t["runs"]),
                        str(t["steps"]),
                        str(t["starts"] - t["runs"]),
                        f"{t['wall']:.2f}",
                        f"{t['steps_s']:.0f}",
                        f"{t['runs_s']:.1f}",
                    ]
                )

    print()
    print(
        f"1) Journal overhead per step: one run, {2 * OVERHEAD_TOOL_STEPS + 1} steps "
        f"({OVERHEAD_TOOL_STEPS} LLM answers calling a no-op tool, {OVERHEAD_TOOL_STEPS} tool "
        "calls, 1 final answer),\n   zero-delay scripted model, in-process Worker. Times in ms."
    )
    print(
        table(
            [
                "backend",
                "steps",
                "events",
                "step p50",
                "step p95",
                "event p50",
                "event p95",
                "steps/s",
            ],
            over_rows,
        )
    )
    print()
    print(
        f"2) Throughput: {THROUGHPUT_RUNS} runs x {2 * THROUGHPUT_TOOL_STEPS + 1} steps, "
        "`everruns worker` processes (default concurrency 16),\n"
        "   timed from the first claim to the last completion (journal timestamps)."
    )
    print(
        table(
            ["backend", "workers", "runs", "steps", "takeovers", "wall s", "steps/s", "runs/s"],
            thr_rows,
        )
    )
    print(f"\ntotal benchmark time {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
