"""The crash matrix: real worker processes SIGKILLed at every journal boundary.

Every case runs one scripted run whose first step calls two tools in parallel
(`call_a`, slow; `call_b`, fast), whose second step calls one tool (`call_c`),
and whose third step answers. A first worker is started with EVERRUNS_CRASH_AT
set and kills itself (SIGKILL) at that point; a second worker, started without
it, takes the run over once the lease expires and finishes it. Then the journal
and the tools' side-effect ledger are checked against the semantics:

* an LLM call started but not completed is repeated (same step, attempt + 1);
* a pure/idempotent tool call started but not completed is repeated with the
  same idempotency key (attempt + 1);
* an at_most_once tool call started but not completed is never run again: the
  model gets `INTERRUPTED_MESSAGE` as an error result;
* completed atoms are never executed again;
* everything else equals the reference transcript of an uncrashed run.

Timing design (what is in flight when the worker dies is deterministic):
`call_a` sleeps 0.4 s before its side effect and 0.4 s after it; `call_b` does
not sleep, so it is finished hundreds of milliseconds before `call_a` writes
anything. The tool calls of step 1 are started in call order (the journal lock
is FIFO), so `call_b` is not started while the worker sits at
`after:tool.started` of `call_a`. So with parallel calls, "the call that was
interrupted" is every call started and unresolved when the worker died: at
`tool.mid` / `before:tool.completed` (hit first by `call_b`) that is a and b, at
`after:tool.completed` (of `call_b`) it is a. The `#3` cases hit `call_c`, alone
in step 2, where exactly that one call is in flight.

Matrix: every point x every effect class on SQLite, the `#3` points for
at_most_once on SQLite, and every point with rotating effect classes on
PostgreSQL (PG_SUBSET). The cases run a few at a time, each on its own database,
in a module fixture, since each one costs two Python start-ups and a lease
expiry; each case is still its own test that checks its own outcome.

The randomized variant kills workers (from the test, `proc.kill()`) at random
times while several runs with random delays execute, and checks the same
invariants on every run. Its seed is printed; EVERRUNS_CRASH_SEED=<seed> replays
the same delays and kill choices (kill timing still depends on the machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from conftest import _PG_PROBLEM as PG_PROBLEM
from conftest import PG_ADMIN_URL
from conftest import _need_pg as need_pg
from everruns.core.events import INTERRUPTED_MESSAGE, TERMINAL_STATUSES, Event, EventType
from everruns.core.state import fold, transcript
from everruns.spec import load_spec
from everruns.store import RunRow, Store
from everruns.store.schema import runs, workers
from helpers import env_for, read_ledger, start_worker, stop, write_agent

TOOLS = {"pure": "pure_record", "idempotent": "idem_record", "at_most_once": "amo_record"}
EFFECTS = tuple(TOOLS)
CALLS = ("call_a", "call_b", "call_c")
STEPS = 3  # scripted LLM responses per run
SLOW = 0.8  # call_a's sleep: side effect at +0.4 s, return at +0.8 s
LLM_DELAY = 0.06  # llm.mid is hit half-way through
WORKER_ARGS = ("--lease-ttl", "1", "--poll-interval", "0.1")
# The killed worker is alone while it runs, so its lease can be shorter: the
# takeover then waits for nothing but the second worker's start-up.
CRASHING_ARGS = ("--lease-ttl", "0.5", "--poll-interval", "0.1")
RESOLUTIONS = (EventType.TOOL_COMPLETED, EventType.TOOL_FAILED)


# ------------------------------------------------------------------ scripts


def script(
    tool: str,
    *,
    keys: tuple[str, str, str] = ("a", "b", "c"),
    slow: float = SLOW,
    fast: float = 0.0,
    last: float = 0.0,
    llm_delay: float = LLM_DELAY,
) -> list[dict[str, Any]]:
    def args(key: str, sleep: float) -> dict[str, Any]:
        return {"key": key, "sleep": sleep} if sleep else {"key": key}

    return [
        {
            "tool_calls": [
                {"id": "call_a", "name": tool, "arguments": args(keys[0], slow)},
                {"id": "call_b", "name": tool, "arguments": args(keys[1], fast)},
            ],
            "delay": llm_delay,
        },
        {
            "tool_calls": [{"id": "call_c", "name": tool, "arguments": args(keys[2], last)}],
            "delay": llm_delay,
        },
        {"text": f"recorded {', '.join(keys)}", "delay": llm_delay},
    ]


def agent_file(path: Path, name: str, effect: str, **script_args: Any) -> Path:
    tool = TOOLS[effect]
    return write_agent(path, script(tool, **script_args), tools=[f"ledgertools:{tool}"], name=name)


# ------------------------------------------------------------------ processes


def log_tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


async def wait_terminal(
    store: Store,
    run_ids: list[str],
    procs: list[subprocess.Popen[bytes]],
    logs: list[Path],
    timeout: float = 45,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = [await store.get_run(r) for r in run_ids]
        if all(row.status in TERMINAL_STATUSES for row in rows):
            return
        for proc, log in zip(procs, logs, strict=True):
            if proc.poll() is not None:
                raise AssertionError(
                    f"worker exited with {proc.returncode} before the runs ended\n{log_tail(log)}"
                )
        await asyncio.sleep(0.05)
    states = {r: (await store.get_run(r)).status for r in run_ids}
    raise AssertionError(
        f"runs not finished after {timeout}s: {states}\n" + "\n".join(log_tail(log) for log in logs)
    )


def assert_clean_log(log: Path) -> None:
    text = log.read_text(errors="replace") if log.exists() else ""
    assert " ERROR " not in text and "Traceback" not in text, f"worker logged errors:\n{text}"


async def reference_transcripts(tmp: Path, specs: dict[str, Path]) -> dict[str, list[Any]]:
    """Run each spec once on a fresh SQLite database with no crash: the reference."""
    url = f"sqlite:///{tmp / 'reference.db'}"
    ledger = tmp / "reference-ledger.jsonl"
    log = tmp / "reference-worker.log"
    store = await Store.open(url)
    try:
        run_ids = {
            name: await store.create_run(load_spec(path), "go") for name, path in specs.items()
        }
        proc = start_worker(env_for(url, EVERRUNS_TEST_LEDGER=str(ledger)), *WORKER_ARGS, log=log)
        try:
            await wait_terminal(store, list(run_ids.values()), [proc], [log])
        finally:
            code = stop(proc)
        assert code == 0, log_tail(log)
        assert_clean_log(log)
        out = {}
        for name, run_id in run_ids.items():
            events = await store.load_events(run_id)
            state = fold(events)
            assert state.status == "completed", (name, state.error)
            assert [e.type for e in events].count(EventType.LLM_COMPLETED) == STEPS
            assert [e.type for e in events].count(EventType.RUN_STARTED) == 1
            out[name] = transcript(state)
        entries = read_ledger(ledger)
        assert len(entries) == len(CALLS) * len(specs), entries
        assert all(e["attempt"] == 1 for e in entries), entries
        return out
    finally:
        await store.close()


@pytest.fixture(scope="session")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Any]]:
    """Reference transcripts of the matrix agents, one per effect class."""
    tmp = tmp_path_factory.mktemp("reference")
    specs = {
        effect: agent_file(tmp / f"{effect}.yaml", f"crash-{effect}", effect) for effect in EFFECTS
    }
    transcripts = asyncio.run(reference_transcripts(tmp, specs))
    for effect, messages in transcripts.items():
        results = [m for m in messages if m["role"] == "tool"]
        assert [m["tool_call_id"] for m in results] == list(CALLS), effect
        assert not any(m["is_error"] for m in results), effect
        assert messages[-1] == {"role": "assistant", "content": "recorded a, b, c"}, effect
    return transcripts


# ------------------------------------------------------------------ invariants


def interrupted_result(reference: list[dict[str, Any]], call_id: str) -> dict[str, Any]:
    ref = next(m for m in reference if m["role"] == "tool" and m["tool_call_id"] == call_id)
    return {**ref, "content": INTERRUPTED_MESSAGE, "is_error": True}


def expected_transcript(reference: list[dict[str, Any]], interrupted: set[str]) -> list[Any]:
    return [
        interrupted_result(reference, m["tool_call_id"])
        if m["role"] == "tool" and m["tool_call_id"] in interrupted
        else m
        for m in reference
    ]


def check_invariants(
    run_id: str,
    effect: str,
    events: list[Event],
    ledger: dict[str, list[dict[str, Any]]],
    reference: list[dict[str, Any]],
) -> set[str]:
    """The crash-safety invariants of one finished run; returns the interrupted call ids.

    `ledger` maps call id to that run's side-effect records, in the order they happened.
    """
    where = f"run {run_id} ({effect})"
    types = [e.type for e in events]
    assert [e.seq for e in events] == list(range(1, len(events) + 1)), f"{where}: seq gaps"
    assert types[0] == EventType.RUN_CREATED
    assert types.count(EventType.RUN_COMPLETED) == 1, f"{where}: {types}"
    assert types[-1] == EventType.RUN_COMPLETED, f"{where}: {types}"
    assert not {EventType.RUN_FAILED, EventType.RUN_CANCELLED} & set(types), f"{where}: {types}"

    starts = [e for e in events if e.type == EventType.RUN_STARTED]
    epochs = [e.data["epoch"] for e in starts]
    assert epochs == sorted(set(epochs)), f"{where}: epochs not increasing: {epochs}"
    # Every start after the first follows a dead holder (nothing here releases a run).
    # (The first start is a takeover too when its claimer died before journaling it.)
    assert all(e.data["takeover"] for e in starts[1:]), f"{where}: {starts}"

    # LLM calls: each step completed exactly once; a repeat only of an unfinished call.
    completed = [e for e in events if e.type == EventType.LLM_COMPLETED]
    assert len(completed) == STEPS, f"{where}: {len(completed)} llm.completed, want {STEPS}"
    assert EventType.LLM_FAILED not in types, f"{where}: {types}"  # the script never fails
    step_attempts: dict[int, list[int]] = defaultdict(list)
    done_steps: list[int] = []
    open_llm: int | None = None
    for e in events:
        if e.type == EventType.LLM_STARTED:
            step = e.data["step"]
            assert open_llm is None, f"{where}: LLM call repeated without a takeover (seq {e.seq})"
            assert step not in done_steps, f"{where}: completed step {step} called again"
            step_attempts[step].append(e.data["attempt"])
            open_llm = step
        elif e.type == EventType.LLM_COMPLETED:
            assert open_llm is not None, f"{where}: llm.completed without llm.started"
            done_steps.append(open_llm)
            open_llm = None
        elif e.type == EventType.RUN_STARTED:
            open_llm = None  # the holder died mid-call: the call may be repeated
    assert done_steps == list(range(1, STEPS + 1)), f"{where}: completed steps {done_steps}"
    assert sorted(step_attempts) == list(range(1, STEPS + 1)), f"{where}: {dict(step_attempts)}"
    for step, attempts in step_attempts.items():
        assert attempts == list(range(1, len(attempts) + 1)), f"{where}: step {step}: {attempts}"

    # Tool calls, from the journal.
    interrupted: set[str] = set()
    for call_id in CALLS:
        mine = [e for e in events if e.data.get("call_id") == call_id]
        started = [e for e in mine if e.type == EventType.TOOL_STARTED]
        resolved = [e for e in mine if e.type in RESOLUTIONS]
        assert len(resolved) == 1, f"{where}: {call_id} resolved {len(resolved)} times"
        assert mine[-1] is resolved[0], f"{where}: {call_id} started again after its result"
        assert [e.data["attempt"] for e in started] == list(range(1, len(started) + 1))
        key = f"{run_id}:{call_id}"
        assert {e.data["idempotency_key"] for e in started} <= {key}, f"{where}: {call_id} key"
        assert {e.data["effect"] for e in started} <= {effect}
        outcome = resolved[0]
        if outcome.data.get("interrupted"):
            assert effect == "at_most_once", f"{where}: {effect} call {call_id} was interrupted"
            assert outcome.data["error"] == INTERRUPTED_MESSAGE
            assert len(started) == 1, f"{where}: interrupted {call_id} started {len(started)}x"
            between = [e for e in events if started[0].seq < e.seq < outcome.seq]
            assert EventType.RUN_STARTED in [e.type for e in between], (
                f"{where}: {call_id} interrupted without a takeover after it started"
            )
            interrupted.add(call_id)
        else:
            assert outcome.type == EventType.TOOL_COMPLETED, f"{where}: {outcome.data}"
            assert started, f"{where}: {call_id} completed without tool.started"
        if effect == "at_most_once":
            assert len(started) <= 1, f"{where}: at_most_once {call_id} started {len(started)}x"

        # Side effects, from the ledger.
        # (A worker that lost its lease while alive may finish an old attempt late, so
        # the order of attempts in the ledger is not checked here; the matrix checks it.)
        records = ledger.get(call_id, [])
        assert all(r["idempotency_key"] == key for r in records), f"{where}: {records}"
        attempts = [r["attempt"] for r in records]
        assert len(attempts) == len(set(attempts)), f"{where}: {call_id} attempts {attempts}"
        assert set(attempts) <= {e.data["attempt"] for e in started}, f"{where}: {records}"
        if effect == "at_most_once":
            assert len(records) <= 1, f"{where}: at_most_once {call_id} ran {len(records)}x"
        if call_id not in interrupted:
            # The attempt whose result was journaled did run.
            assert started[-1].data["attempt"] in attempts, (
                f"{where}: {call_id}: ledger attempts {attempts}, "
                f"journaled attempts {[e.data['attempt'] for e in started]}"
            )

    state = fold(events)
    assert state.status == "completed"
    assert state.result == reference[-1]["content"]
    assert transcript(state) == expected_transcript(reference, interrupted), where
    return interrupted


def ledger_by_call(entries: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for entry in entries:
        out[entry["call_id"]].append(entry)
    return out


# ------------------------------------------------------------------ the matrix


@dataclass(frozen=True)
class Case:
    point: str  # EVERRUNS_CRASH_AT
    in_flight: frozenset[str] = frozenset()  # tool calls started, unresolved at the kill
    side_effects: frozenset[str] = frozenset()  # tool calls that ran in the killed worker
    llm_in_flight: bool = False  # an LLM call started, not completed at the kill


def case(point: str, in_flight: str = "", side_effects: str = "", llm: bool = False) -> Case:
    def ids(letters: str) -> frozenset[str]:
        return frozenset(f"call_{x}" for x in letters)

    return Case(point, ids(in_flight), ids(side_effects), llm)


# The first hit of each point falls in step 1 (LLM) or on the parallel calls
# a (slow) and b (fast); `#3` hits land on call c, alone in step 2.
#
# One transaction per durable step (docs/architecture.md): a completion is committed
# together with the start of the atom decided right after it, so some boundaries are one
# commit. `llm.completed` of step 1 commits with `tool.started` of call a; `llm.completed`
# of the last step with `run.completed`; the result of the last open call of an answer
# with the next `llm.started`. `before:` a point is before that commit, `after:` after it.
CASES = [
    case("before:llm.started"),
    case("after:llm.started", llm=True),
    case("llm.mid", llm=True),
    case("before:llm.completed", llm=True),
    case("after:llm.completed", "a"),  # committed with call a's start
    case("before:tool.started", llm=True),  # = before:llm.completed of step 1
    case("after:tool.started", "a"),  # call a started; b waits for the journal
    case("tool.mid", "ab", "b"),  # b's side effect done; a asleep before its own
    case("before:tool.completed", "ab", "b"),  # b about to be journaled as done
    case("after:tool.completed", "a", "b"),  # b done; a still running
    case("before:run.completed", "", "abc", llm=True),  # with the last llm.completed
]
# The tool boundaries again, on call c alone in step 2 (the third hit).
SINGLE_CALL_CASES = [
    case("before:tool.started#3", "", "ab", llm=True),  # with step 2's llm.completed
    case("after:tool.started#3", "c", "ab"),
    case("tool.mid#3", "c", "abc"),
    case("before:tool.completed#3", "c", "abc"),
    case("after:tool.completed#3", "", "abc", llm=True),  # with step 3's llm.started
]
CASE_BY_POINT = {c.point: c for c in CASES + SINGLE_CALL_CASES}

# PostgreSQL: every point once, the effect classes rotated (tool.mid with both
# outcomes: repeated and interrupted).
PG_SUBSET = [
    ("before:llm.started", "pure"),
    ("after:llm.started", "idempotent"),
    ("llm.mid", "at_most_once"),
    ("before:llm.completed", "pure"),
    ("after:llm.completed", "idempotent"),
    ("before:tool.started", "at_most_once"),
    ("after:tool.started", "at_most_once"),
    ("tool.mid", "idempotent"),
    ("tool.mid", "at_most_once"),
    ("before:tool.completed", "pure"),
    ("after:tool.completed", "at_most_once"),
    ("before:run.completed", "idempotent"),
]

MATRIX = (
    [
        pytest.param("sqlite", c.point, effect, id=f"sqlite-{effect}-{c.point}")
        for effect in EFFECTS
        for c in CASES
    ]
    + [
        # A lone at_most_once call: exactly that call is interrupted, nothing else.
        pytest.param("sqlite", c.point, "at_most_once", id=f"sqlite-at_most_once-{c.point}")
        for c in SINGLE_CALL_CASES
    ]
    + [
        pytest.param(
            "postgres", point, effect, id=f"postgres-{effect}-{point}", marks=pytest.mark.postgres
        )
        for point, effect in PG_SUBSET
    ]
)


@dataclass
class Outcome:
    """What one crash case produced: the journal before and after the takeover, the ledger."""

    run_id: str
    before: list[Event]  # the journal when worker 1 had died
    events: list[Event]  # the journal when the run had completed
    row: RunRow
    entries: list[dict[str, Any]]  # the ledger: every tool side effect, in order
    killed_pid: int
    takeover_pid: int


async def execute_case(
    url: str, point: str, effect: str, tmp: Path, migrations: asyncio.Lock | None = None
) -> Outcome:
    """Worker 1 kills itself at `point`; worker 2 takes the run over and finishes it.

    `migrations` serializes Store.open (Alembic's migration context is process-global,
    so concurrent upgrades in one process trip over each other).
    """
    spec = load_spec(agent_file(tmp / "agent.yaml", f"crash-{effect}", effect))
    ledger_path = tmp / "ledger.jsonl"
    logs = [tmp / "worker1.log", tmp / "worker2.log"]
    async with migrations or contextlib.nullcontext():
        store = await Store.open(url)
    try:
        run_id = await store.create_run(spec, "go")

        env = env_for(url, EVERRUNS_TEST_LEDGER=str(ledger_path))
        crashing = start_worker({**env, "EVERRUNS_CRASH_AT": point}, *CRASHING_ARGS, log=logs[0])
        try:
            code = await asyncio.to_thread(crashing.wait, 60)
        except subprocess.TimeoutExpired:
            crashing.kill()
            crashing.wait()
            raise AssertionError(f"{point} was never reached\n{log_tail(logs[0])}") from None
        assert code == -signal.SIGKILL, f"worker 1 exited {code}\n{log_tail(logs[0])}"
        before = await store.load_events(run_id)
        assert EventType.RUN_COMPLETED not in [e.type for e in before]

        recovering = start_worker(env, *WORKER_ARGS, log=logs[1])
        try:
            await wait_terminal(store, [run_id], [recovering], [logs[1]])
        finally:
            code = await asyncio.to_thread(stop, recovering)
        assert code == 0, f"worker 2 exited {code}\n{log_tail(logs[1])}"
        assert_clean_log(logs[1])

        events = await store.load_events(run_id)
        row = await store.get_run(run_id)
    finally:
        await store.close()
    return Outcome(
        run_id, before, events, row, read_ledger(ledger_path), crashing.pid, recovering.pid
    )


BATCH_CONCURRENCY = 3  # cases executed at once (each mostly waits for a start-up or a lease)
Key = tuple[str, str, str]  # (db, point, effect)


def _pg_admin(sql: str) -> None:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(sql)


@contextlib.asynccontextmanager
async def fresh_database(db: str, tmp: Path) -> AsyncIterator[str]:
    """A new SQLite file, or a new PostgreSQL database dropped afterwards."""
    if db == "sqlite":
        yield f"sqlite:///{tmp / 'everruns.db'}"
        return
    name = f"everruns_t_{uuid.uuid4().hex[:12]}"
    await asyncio.to_thread(_pg_admin, f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    finally:
        await asyncio.to_thread(_pg_admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def outcomes(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[Key, Outcome | BaseException]:
    """Execute the selected cases a few at a time, each on its own database.

    Each case still is its own test, which checks its outcome; running them
    concurrently keeps the file's run time affordable, since every case starts
    two Python processes and waits for a lease to expire.
    """
    wanted: list[Key] = [
        (item.callspec.params["db"], item.callspec.params["point"], item.callspec.params["effect"])
        for item in request.session.items
        if getattr(item, "module", None) is request.module
        and getattr(item, "originalname", None) == "test_crash_point"
    ]
    if PG_PROBLEM is not None:  # those tests skip (or fail, if PostgreSQL is required)
        wanted = [key for key in wanted if key[0] != "postgres"]
    root = tmp_path_factory.mktemp("cases")

    async def run_all() -> dict[Key, Outcome | BaseException]:
        limit = asyncio.Semaphore(BATCH_CONCURRENCY)
        migrations = asyncio.Lock()

        async def one(index: int, db: str, point: str, effect: str) -> Outcome | BaseException:
            tmp = root / f"{index:02d}-{db}-{effect}-{point.replace(':', '_').replace('#', '_')}"
            tmp.mkdir()
            async with limit:
                try:
                    async with fresh_database(db, tmp) as url:
                        return await execute_case(url, point, effect, tmp, migrations)
                except Exception as exc:
                    return exc

        results = await asyncio.gather(*(one(i, *key) for i, key in enumerate(wanted)))
        return dict(zip(wanted, results, strict=True))

    return asyncio.run(run_all())


@pytest.mark.timeout(900)  # the first case waits for the whole batch
@pytest.mark.parametrize(("db", "point", "effect"), MATRIX)
async def test_crash_point(
    db: str,
    point: str,
    effect: str,
    reference: dict[str, list[Any]],
    outcomes: dict[Key, Outcome | BaseException],
) -> None:
    if db == "postgres":
        need_pg()
    result = outcomes[(db, point, effect)]
    if isinstance(result, BaseException):
        raise result
    outcome = result
    expect = CASE_BY_POINT[point]
    run_id, before, events, row = outcome.run_id, outcome.before, outcome.events, outcome.row
    crashing_pid, recovering_pid = outcome.killed_pid, outcome.takeover_pid

    assert events[: len(before)] == before, "the journal was rewritten"
    entries = outcome.entries
    assert {e["pid"] for e in entries} <= {crashing_pid, recovering_pid}
    ledger = ledger_by_call(entries)
    interrupted = check_invariants(run_id, effect, events, ledger, reference[effect])
    assert row.status == "completed" and row.result == reference[effect][-1]["content"]

    # Exactly one takeover, at a higher epoch.
    starts = [e for e in events if e.type == EventType.RUN_STARTED]
    assert len(starts) == 2, [e.to_dict() for e in starts]
    assert starts[1].data["epoch"] > starts[0].data["epoch"]
    assert [e.data["takeover"] for e in starts] == [False, True]
    # Worker 2's first write is the takeover: the charge of the call worker 1 lost (if one
    # was in flight), then run.started, in one commit (engine/runner.py).
    lost = events[len(before) : starts[1].seq - 1]
    assert all(e.type == EventType.LLM_CHARGED for e in lost), [e.type for e in lost]
    assert [e.data["reason"] for e in lost] == ["lost"] * expect.llm_in_flight
    assert all(e.ts == starts[1].ts for e in lost), "the charge rides with the takeover"
    assert starts[1].seq == len(before) + len(lost) + 1, "the takeover is worker 2's first write"

    # Worker 1 died exactly at the point: after the n-th event of that type, or before it.
    dead = events[: len(before)]
    name, _, nth = point.partition("#")
    hits = int(nth or 1)
    where, _, kind = name.partition(":")
    if kind:
        count = [e.type for e in dead].count(kind)
        assert count == (hits if where == "after" else hits - 1), [e.type for e in dead]
        if where == "after":  # the event is in the last commit (its events share one ts)
            last = next(e for e in reversed(dead) if e.type == kind)
            assert last.ts == dead[-1].ts, [(e.type, e.ts) for e in dead]

    # What the killed worker left in flight is what the timing design says.
    in_flight = {
        c
        for c in CALLS
        if any(e.type == EventType.TOOL_STARTED and e.data["call_id"] == c for e in dead)
        and not any(e.type in RESOLUTIONS and e.data["call_id"] == c for e in dead)
    }
    assert in_flight == expect.in_flight, f"in flight at the kill: {in_flight}"
    last_dead = dead[-1].type
    assert (last_dead == EventType.LLM_STARTED) == expect.llm_in_flight, [e.type for e in dead]

    # LLM: only the unfinished call is repeated, with the next attempt.
    llm_started = [e for e in events if e.type == EventType.LLM_STARTED]
    assert len(llm_started) == STEPS + expect.llm_in_flight
    if expect.llm_in_flight:
        repeat = next(e for e in events[len(before) :] if e.type == EventType.LLM_STARTED)
        assert (repeat.data["step"], repeat.data["attempt"]) == (dead[-1].data["step"], 2)

    # Tools: in-flight at_most_once calls are interrupted, pure/idempotent ones repeated.
    if effect == "at_most_once":
        assert interrupted == set(expect.in_flight)
    else:
        assert interrupted == set()
    for call_id in CALLS:
        records = [(r["pid"], r["attempt"]) for r in ledger.get(call_id, [])]
        want: list[tuple[int, int]] = []
        if call_id in expect.side_effects:
            want.append((crashing_pid, 1))
        if call_id in expect.in_flight:
            if effect != "at_most_once":
                want.append((recovering_pid, 2))  # repeated, same key (checked above)
        elif call_id not in expect.side_effects:
            want.append((recovering_pid, 1))
        assert records == want, (
            f"{call_id}: ledger {records}, want {want} (pids: "
            f"killed {crashing_pid}, takeover {recovering_pid})"
        )
        started = [
            e.data["attempt"]
            for e in events
            if e.type == EventType.TOOL_STARTED and e.data["call_id"] == call_id
        ]
        repeated = call_id in expect.in_flight and effect != "at_most_once"
        assert started == ([1, 2] if repeated else [1]), f"{call_id}: attempts {started}"


# ------------------------------------------------------------------ randomized


# `make soak` raises these (EVERRUNS_SOAK_RUNS / EVERRUNS_SOAK_KILLS) for long randomized runs.
RANDOM_RUNS = int(os.environ.get("EVERRUNS_SOAK_RUNS", "6"))
RANDOM_KILLS = int(os.environ.get("EVERRUNS_SOAK_KILLS", "5"))


async def holds_lease(store: Store, pid: int) -> bool:
    """Whether the worker process `pid` holds the lease of some run."""
    query = (
        sa.select(sa.func.count())
        .select_from(runs.join(workers, runs.c.lease_owner == workers.c.id))
        .where(workers.c.pid == pid)
    )
    async with store.engine.connect() as conn:
        return bool((await conn.execute(query)).scalar())


async def test_random_kills(db_url: str, tmp_path: Path) -> None:
    seed = int(os.environ.get("EVERRUNS_CRASH_SEED") or random.randrange(2**32))
    print(f"crash matrix random seed: {seed} (rerun with EVERRUNS_CRASH_SEED={seed})")
    rng = random.Random(seed)
    where = f"seed {seed}"

    specs: dict[str, Path] = {}
    effects: dict[str, str] = {}
    keys: dict[str, tuple[str, str, str]] = {}
    for i in range(RANDOM_RUNS):
        effect = EFFECTS[i % len(EFFECTS)]
        name = f"random-{i}"
        keys[name] = (f"{i}a", f"{i}b", f"{i}c")
        specs[name] = agent_file(
            tmp_path / f"{name}.yaml",
            name,
            effect,
            keys=keys[name],
            slow=round(rng.uniform(0, 1.0), 2),
            fast=round(rng.uniform(0, 0.4), 2),
            last=round(rng.uniform(0, 0.6), 2),
            llm_delay=round(rng.uniform(0.02, 0.5), 2),
        )
        effects[name] = effect
    reference = await reference_transcripts(tmp_path, specs)

    ledger_path = tmp_path / "ledger.jsonl"
    env = env_for(db_url, EVERRUNS_TEST_LEDGER=str(ledger_path))
    # Two workers share the runs; a kill loop must not fail them as crash loops.
    args = (*WORKER_ARGS, "--concurrency", "3", "--max-crashes", "1000")
    store = await Store.open(db_url)
    workers: list[tuple[subprocess.Popen[bytes], Path]] = []
    try:
        run_ids = {
            name: await store.create_run(load_spec(path), "go") for name, path in specs.items()
        }
        kills = 0
        n = 0
        deadline = time.monotonic() + 90 + 3 * RANDOM_KILLS + RANDOM_RUNS
        while True:
            rows = [await store.get_run(r) for r in run_ids.values()]
            if all(row.status in TERMINAL_STATUSES for row in rows):
                break
            assert time.monotonic() < deadline, (
                f"{where}: runs not finished: {[(r.id, r.status) for r in rows]}"
            )
            while len(workers) < 2:
                n += 1
                log = tmp_path / f"worker{n}.log"
                workers.append((start_worker(env, *args, log=log), log))
            if kills >= RANDOM_KILLS:
                await asyncio.sleep(0.1)
                continue
            # Kill a random worker that holds leases, at a random moment (a kill
            # during its start-up would only test the start-up).
            holders = [w for w in workers if await holds_lease(store, w[0].pid)]
            if not holders:
                await asyncio.sleep(0.02)
                continue
            victim = holders[rng.randrange(len(holders))]
            await asyncio.sleep(rng.uniform(0.0, 0.9))
            workers.remove(victim)
            victim[0].kill()
            assert victim[0].wait(10) == -signal.SIGKILL, log_tail(victim[1])
            kills += 1
        for proc, log in workers:
            code = stop(proc)
            # SIGTERM before the worker installed its handler (still starting) kills it.
            starting = "started (concurrency" not in log.read_text(errors="replace")
            assert code == 0 or (starting and code == -signal.SIGTERM), log_tail(log)
            assert_clean_log(log)
        events = {name: await store.load_events(run_id) for name, run_id in run_ids.items()}
    finally:
        for proc, _log in workers:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        await store.close()

    entries = read_ledger(ledger_path)
    takeovers = 0
    interrupted_total = 0
    for name, run_id in run_ids.items():
        mine = [e for e in entries if e["key"] in keys[name]]
        interrupted = check_invariants(
            run_id, effects[name], events[name], ledger_by_call(mine), reference[name]
        )
        interrupted_total += len(interrupted)
        takeovers += [e.type for e in events[name]].count(EventType.RUN_STARTED) - 1
    print(
        f"{where}: {kills} kills, {takeovers} takeovers, "
        f"{interrupted_total} interrupted at_most_once calls"
    )
    assert takeovers >= 1, f"{where}: no run was ever taken over; the test exercised nothing"
