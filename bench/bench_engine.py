#!/usr/bin/env python3
"""Engine benchmark: what durability costs, next to what the database itself costs.

Run with `make bench` (see bench/README.md). Offline; the model is the scripted provider,
the tool a no-op, so what is measured is the engine: journal appends, leases, fold/decide
and the worker loop. Each figure is printed next to the raw-commit floor of the same
database measured in the same process run; on a noisy machine the ratio is what counts.

  1. floor        raw INSERT+COMMIT per row (sqlite3 WAL synchronous=FULL; psycopg)
  2. per step     one run of 201 durable steps (an LLM call or a tool call each), in-process
                  Worker; the journal-timed median time per step
  3. flat         a 3,001-step run: per-step cost of the first and the last 10 %
  4. throughput   50 runs x 21 steps, 1 and 4 `everruns worker` processes
  5. scale        10,000 runs in flight in one `everruns worker` process, each awaiting a
                  model that takes 1 s: peak RSS, model-latency stretch, engine crashes
  6. latency      pickup (start -> run.started by an idle worker process), cancel (request ->
                  run.cancelled, the LLM stream interrupted, across processes), takeover after
                  SIGKILL (kill -> the next holder's run.started)

SQLite uses temporary files; PostgreSQL scratch databases (created and dropped here; skipped
when the server is unreachable). `EVERRUNS_BENCH_ONLY=floor,step,...` picks sections and
`EVERRUNS_BENCH_SCALE_RUNS` resizes section 5.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import signal
import sqlite3
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
ONLY = set(filter(None, os.environ.get("EVERRUNS_BENCH_ONLY", "").split(",")))
SCALE_RUNS = int(os.environ.get("EVERRUNS_BENCH_SCALE_RUNS", "10000"))
TERMINAL = ("completed", "failed", "cancelled")
COMPLETIONS = ("llm.completed", "tool.completed")
PAYLOAD = {"step": 0, "ok": True, "tool": "noop", "text": "lorem ipsum dolor sit amet consectetur"}


@tool(effect="pure")
async def noop(i: int) -> dict[str, Any]:
    """Return a ~100-byte JSON-able dict (the peers' payload)."""
    return {**PAYLOAD, "step": i}


def agent(name: str, tool_steps: int, *, delay: float = 0.0) -> AgentSpec:
    """`tool_steps` answers calling `noop`, then a final answer: 2 * tool_steps + 1 steps."""
    usage = {"input_tokens": 10, "output_tokens": 5}
    responses: list[dict[str, Any]] = [
        {"tool_calls": [{"name": "noop", "arguments": {"i": i}}], "usage": usage}
        for i in range(tool_steps)
    ]
    responses.append({"text": "done", "usage": usage, "delay": delay})
    return parse_spec(
        {
            "name": name,
            "model": {"provider": "scripted", "responses": responses},
            "tools": [{"python": "bench_engine:noop"}] if tool_steps else [],
            "limits": {"max_steps": 10 * (tool_steps + 1)},
        }
    )


def wanted(section: str) -> bool:
    return not ONLY or section in ONLY


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def pct(values: list[float], p: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


# ---------------------------------------------------------------- databases


def pg_problem() -> str | None:
    try:
        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return None
    except Exception as exc:
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


@contextlib.contextmanager
def sqlite_db(tmp: Path, name: str) -> Iterator[str]:
    yield f"sqlite:///{tmp / f'{name}-{uuid.uuid4().hex[:6]}.db'}"


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


# ---------------------------------------------------------------- 1. floors

FLOOR_ROWS = 200


def floor_sqlite(tmp: Path) -> float:
    """ms per INSERT+COMMIT of a ~100-byte JSON row, WAL, synchronous=FULL."""
    conn = sqlite3.connect(tmp / f"floor-{uuid.uuid4().hex[:6]}.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, data TEXT)")
    times = []
    for i in range(FLOOR_ROWS):
        t0 = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t (data) VALUES (?)", (json.dumps({**PAYLOAD, "step": i}),))
        conn.execute("COMMIT")
        times.append(time.perf_counter() - t0)
    conn.close()
    return median(times) * 1000


def floor_pg(url: str) -> float:
    """ms per INSERT+COMMIT on PostgreSQL (psycopg, synchronous_commit as configured)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bench_floor (id serial PRIMARY KEY, data text)")
        times = []
        for i in range(FLOOR_ROWS):
            t0 = time.perf_counter()
            conn.execute(
                "INSERT INTO bench_floor (data) VALUES (%s)", (json.dumps({**PAYLOAD, "step": i}),)
            )
            times.append(time.perf_counter() - t0)
        conn.execute("DROP TABLE bench_floor")
    return median(times) * 1000


# ---------------------------------------------------------------- 2./3. one run in-process


async def run_in_process(store: Store, spec: AgentSpec) -> str:
    run_id = await store.create_run(spec, "go")
    broker = Broker()
    done = broker.subscribe(run_id)
    worker = Worker(store, concurrency=1, lease_ttl=60, poll_interval=0.01, broker=broker)
    task = asyncio.create_task(worker.run())
    try:
        while True:
            event = await asyncio.wait_for(done.get(), 600)
            if event["type"] in ("run.completed", "run.failed", "run.cancelled"):
                break
    finally:
        worker.stop()
        await task
    if event["type"] != "run.completed":
        raise RuntimeError(f"run ended with {event['type']}: {event['data']}")
    return run_id


async def step_times(store: Store, run_id: str) -> list[float]:
    """Seconds per durable step from the journal: between consecutive completions' commits
    (the first from run.started)."""
    journal = await store.load_events(run_id)
    begin = next(e.ts for e in journal if e.type == "run.started")
    ends = [e.ts for e in journal if e.type in COMPLETIONS]
    return [b - a for a, b in zip([begin, *ends], ends, strict=False)]


async def per_step(url: str, tool_steps: int) -> list[float]:
    store = await Store.open(url)
    try:
        await run_in_process(store, agent("warmup", 3))
        run_id = await run_in_process(store, agent(f"steps-{tool_steps}", tool_steps))
        return await step_times(store, run_id)
    finally:
        await store.close()


# ---------------------------------------------------------------- 4. throughput


async def set_wake(store: Store, wake_at: float | None) -> None:
    async with store.engine.begin() as conn:
        await conn.execute(sa.update(runs).values(wake_at=wake_at))


async def scalar(store: Store, query: Any) -> Any:
    async with store.engine.connect() as conn:
        return (await conn.execute(query)).scalar()


def spawn_workers(url: str, n: int, log_dir: Path, *args: str) -> list[subprocess.Popen[bytes]]:
    """`everruns worker` processes; they import the tool from bench/ via PYTHONPATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCH_DIR), env.get("PYTHONPATH")]))
    env.pop("EVERRUNS_CRASH_AT", None)
    procs = []
    for i in range(n):
        log = open(log_dir / f"worker-{uuid.uuid4().hex[:6]}-{i}.log", "wb")
        cmd = [EVERRUNS, "worker", "--db", url, *args]
        procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=log))
    return procs


def stop_workers(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def wait_workers(store: Store, n: int, procs: list[subprocess.Popen[bytes]]) -> None:
    live = sa.select(sa.func.count()).select_from(workers).where(workers.c.stopped_at.is_(None))
    deadline = time.monotonic() + 60
    while await scalar(store, live) < n:
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            raise RuntimeError("workers did not start")
        await asyncio.sleep(0.05)


async def wait_done(store: Store, timeout: float) -> None:
    unfinished = sa.select(sa.func.count()).select_from(runs).where(runs.c.status.not_in(TERMINAL))
    deadline = time.monotonic() + timeout
    while await scalar(store, unfinished):
        if time.monotonic() > deadline:
            raise RuntimeError(f"runs did not finish in {timeout:g}s")
        await asyncio.sleep(0.1)


async def bulk_create(store: Store, spec: AgentSpec, n: int) -> None:
    version = await store.save_agent(spec)
    for start in range(0, n, 500):
        async with store.engine.begin() as conn:
            for _ in range(min(500, n - start)):
                await store.runs.insert_run(conn, spec.name, version, "go", {})


async def throughput(url: str, n_workers: int, log_dir: Path, *args: str) -> dict[str, Any]:
    store = await Store.open(url)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        await bulk_create(store, agent("throughput", 10), 50)
        await set_wake(store, None)  # held back until every worker is up
        procs = spawn_workers(url, n_workers, log_dir, *args)
        await wait_workers(store, n_workers, procs)
        await set_wake(store, time.time())
        await wait_done(store, 300)
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
            first, last = (
                await conn.execute(
                    sa.select(
                        sa.func.min(events.c.ts).filter(events.c.type == "run.started"),
                        sa.func.max(events.c.ts).filter(events.c.type == "run.completed"),
                    )
                )
            ).one()
    finally:
        await store.close()
    if counts.get("run.completed") != 50:
        raise RuntimeError(f"expected 50 completed runs, got {counts}")
    steps = counts.get("llm.completed", 0) + counts.get("tool.completed", 0)
    return {"steps": steps, "wall": last - first, "sps": steps / (last - first)}


# ---------------------------------------------------------------- 5. scale


def read_logs(log_dir: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in log_dir.glob("worker-*.log"))


def rss_peak_mb(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def scale(url: str, n: int, logs: Path) -> dict[str, Any]:
    log_dir = logs / f"scale-{uuid.uuid4().hex[:6]}"  # its own logs: crashes counted here
    log_dir.mkdir()
    store = await Store.open(url)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        await bulk_create(store, agent("scale", 0, delay=1.0), n)
        await set_wake(store, None)
        procs = spawn_workers(url, 1, log_dir, "--concurrency", str(n), "--lease-ttl", "60")
        await wait_workers(store, 1, procs)
        started = time.time()
        await set_wake(store, started)
        await wait_done(store, 900)
        wall = time.time() - started
        rss = rss_peak_mb(procs[0].pid)
    finally:
        stop_workers(procs)
    try:
        async with store.engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(events.c.run_id, events.c.type, events.c.ts).where(
                        events.c.type.in_(("llm.started", "llm.completed", "run.completed"))
                    )
                )
            ).all()
            crashes = await conn.execute(
                sa.select(sa.func.count()).select_from(runs).where(runs.c.status != "completed")
            )
            not_completed = crashes.scalar()
    finally:
        await store.close()
    begin: dict[str, float] = {}
    stretch: list[float] = []
    for run_id, kind, ts in sorted(rows, key=lambda r: r[2]):
        if kind == "llm.started":
            begin[run_id] = ts
        elif kind == "llm.completed" and run_id in begin:
            stretch.append(ts - begin[run_id])
    log_text = read_logs(log_dir)
    return {
        "runs": n,
        "wall": wall,
        "rss_mb": rss,
        "stretch_p50": median(stretch),
        "stretch_p99": pct(stretch, 99),
        "not_completed": not_completed,
        "engine_crashes": log_text.count("crashed in the engine"),
    }


# ---------------------------------------------------------------- 6. latency


async def journal_ts(store: Store, run_id: str, kind: str, timeout: float = 60) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for e in await store.load_events(run_id):
            if e.type == kind:
                return e.ts
        await asyncio.sleep(0.005)
    raise RuntimeError(f"{run_id}: no {kind} within {timeout:g}s")


async def latency(url: str, log_dir: Path) -> dict[str, Any]:
    store = await Store.open(url)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs = spawn_workers(url, 1, log_dir, "--lease-ttl", "30")
        await wait_workers(store, 1, procs)
        await asyncio.sleep(1.0)  # idle
        quick = agent("pickup", 0)
        await store.save_agent(quick)
        pickup = []
        for _ in range(20):
            t0 = time.time()
            run_id = await store.create_run(quick, "go")
            pickup.append(await journal_ts(store, run_id, "run.started") - t0)
            await asyncio.sleep(0.05)
        slow = agent("cancel", 0, delay=30.0)
        cancel = []
        for _ in range(10):
            run_id = await store.create_run(slow, "go")
            await journal_ts(store, run_id, "llm.started")
            t0 = time.time()
            await store.cancel(run_id)
            cancel.append(await journal_ts(store, run_id, "run.cancelled") - t0)
    finally:
        stop_workers(procs)
    # Takeover: worker A holds a run in a long LLM call and is SIGKILLed; B takes it over.
    try:
        ttl = 2.0
        slow = agent("takeover", 0, delay=5.0)
        a = spawn_workers(url, 1, log_dir, "--lease-ttl", str(ttl))
        await wait_workers(store, 1, a)
        run_id = await store.create_run(slow, "go")
        await journal_ts(store, run_id, "llm.started")
        b = spawn_workers(url, 1, log_dir, "--lease-ttl", str(ttl))
        await asyncio.sleep(1.0)  # B is up and idle
        t0 = time.time()
        a[0].kill()
        a[0].wait()
        deadline = time.monotonic() + 30
        takeover = float("nan")
        while time.monotonic() < deadline:
            starts = [e for e in await store.load_events(run_id) if e.type == "run.started"]
            if len(starts) > 1:
                takeover = starts[-1].ts - t0
                break
            await asyncio.sleep(0.01)
        stop_workers(b)
    finally:
        await store.close()
    return {
        "pickup_p50": median(pickup) * 1000,
        "pickup_max": max(pickup) * 1000,
        "cancel_p50": median(cancel) * 1000,
        "cancel_p99": pct(cancel, 99) * 1000,
        "takeover": takeover,
        "ttl": ttl,
    }


# ---------------------------------------------------------------- main


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    fmt = [(str.ljust if i == 0 else str.rjust) for i in range(len(headers))]
    lines = ["  ".join(f(h, w) for f, h, w in zip(fmt, headers, widths, strict=True))]
    lines.append("-" * len(lines[0]))
    for r in rows:
        lines.append("  ".join(f(c, w) for f, c, w in zip(fmt, r, widths, strict=True)))
    return "\n".join(lines)


def say(started: float, text: str) -> None:
    print(f"[{time.monotonic() - started:6.1f}s] {text}", flush=True)


async def main() -> int:
    print(
        f"everruns engine benchmark: Python {platform.python_version()}, SQLite "
        f"{sqlite3.sqlite_version}, {platform.system()} {platform.machine()}, "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    backends: list[tuple[str, Any]] = [("sqlite", sqlite_db)]
    problem = pg_problem()
    if problem is None:
        backends.append(("postgresql", pg_db))
    else:
        print(f"PostgreSQL unreachable at {PG_ADMIN_URL} ({problem}): SQLite only")
    started = time.monotonic()
    out: dict[str, dict[str, Any]] = {name: {} for name, _ in backends}
    with tempfile.TemporaryDirectory(prefix="everruns-bench-") as tmpdir:
        tmp = Path(tmpdir)
        for name, database in backends:
            r = out[name]
            say(started, f"{name}: floor")
            if name == "sqlite":
                r["floor"] = floor_sqlite(tmp)
            else:
                with database(tmp, "floor") as url:
                    r["floor"] = floor_pg(url)
            if wanted("step"):
                say(started, f"{name}: per step, 201 steps")
                with database(tmp, "step") as url:
                    r["step"] = await per_step(url, 100)
            if wanted("flat"):
                say(started, f"{name}: flat, 3,001 steps")
                with database(tmp, "flat") as url:
                    r["flat"] = await per_step(url, 1500)
            if wanted("throughput"):
                for n in (1, 4):
                    say(started, f"{name}: throughput, {n} worker(s)")
                    with database(tmp, f"thr{n}") as url:
                        r[f"thr{n}"] = await throughput(url, n, tmp)
            if wanted("scale"):
                say(started, f"{name}: scale, {SCALE_RUNS} runs in one worker")
                with database(tmp, "scale") as url:
                    r["scale"] = await scale(url, SCALE_RUNS, tmp)
            if wanted("latency"):
                say(started, f"{name}: latency")
                with database(tmp, "latency") as url:
                    r["latency"] = await latency(url, tmp)
    report(out)
    print(f"\ntotal benchmark time {time.monotonic() - started:.0f}s")
    return 0


def report(out: dict[str, dict[str, Any]]) -> None:
    print("\n1-2) Per durable step (one journaled LLM call or tool call), 201-step run,")
    print("     in-process Worker, journal-timed; floor = raw INSERT+COMMIT, same run. ms.")
    rows = []
    for name, r in out.items():
        if "step" in r:
            s = [t * 1000 for t in r["step"]]
            rows.append(
                [
                    name,
                    f"{r['floor']:.3f}",
                    f"{median(s):.3f}",
                    f"{min(s):.3f}-{max(s):.3f}",
                    f"{pct(s, 95):.3f}",
                    f"{median(s) / r['floor']:.1f}x",
                ]
            )
    if rows:
        print(table(["db", "floor", "step p50", "min-max", "p95", "x floor"], rows))
    rows = []
    for name, r in out.items():
        if "flat" in r:
            s = r["flat"]
            k = len(s) // 10
            first, last = median(s[:k]) * 1000, median(s[-k:]) * 1000
            rows.append([name, str(len(s)), f"{first:.3f}", f"{last:.3f}", f"{last / first:.2f}"])
    if rows:
        print("\n3) Flat cost with run length: median ms per step, first and last 10 % of the run.")
        print(table(["db", "steps", "first 10%", "last 10%", "last/first"], rows))
    rows = []
    for name, r in out.items():
        for n in (1, 4):
            if f"thr{n}" in r:
                t = r[f"thr{n}"]
                rows.append([name, str(n), str(t["steps"]), f"{t['wall']:.2f}", f"{t['sps']:.0f}"])
    if rows:
        print("\n4) Throughput: 50 runs x 21 steps, `everruns worker` processes, first claim")
        print("   to last completion (journal timestamps).")
        print(table(["db", "workers", "steps", "wall s", "steps/s"], rows))
    rows = []
    for name, r in out.items():
        if "scale" in r:
            s = r["scale"]
            rows.append(
                [
                    name,
                    str(s["runs"]),
                    f"{s['wall']:.1f}",
                    f"{s['rss_mb']:.0f}",
                    f"{s['stretch_p50']:.2f}",
                    f"{s['stretch_p99']:.2f}",
                    str(s["not_completed"]),
                    str(s["engine_crashes"]),
                ]
            )
    if rows:
        print("\n5) Scale: runs in flight in ONE worker process, each awaiting a 1 s model.")
        print("   stretch = seconds from llm.started to llm.completed (1.00 = no stretch).")
        print(
            table(
                [
                    "db",
                    "runs",
                    "wall s",
                    "peak RSS MB",
                    "stretch p50",
                    "p99",
                    "not completed",
                    "engine crashes",
                ],
                rows,
            )
        )
    rows = []
    for name, r in out.items():
        if "latency" in r:
            a = r["latency"]
            rows.append(
                [
                    name,
                    f"{a['pickup_p50']:.0f}",
                    f"{a['pickup_max']:.0f}",
                    f"{a['cancel_p50']:.0f}",
                    f"{a['cancel_p99']:.0f}",
                    f"{a['takeover']:.2f} (ttl {a['ttl']:g})",
                ]
            )
    if rows:
        print("\n6) Latency across processes, ms (takeover in s): pickup = start -> run.started")
        print("   by an idle worker; cancel = request -> run.cancelled while the LLM streams.")
        print(
            table(
                ["db", "pickup p50", "pickup max", "cancel p50", "cancel p99", "takeover s"],
                rows,
            )
        )


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
