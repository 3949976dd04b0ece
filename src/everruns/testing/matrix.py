"""The crash matrix for a user's agent: one real worker SIGKILLed at every boundary.

`crash_matrix(spec, input)` runs the agent once without a crash (the reference),
then once per boundary: a worker subprocess kills itself there (SIGKILL), a fresh
worker takes the run over after the lease expires and finishes it. Boundaries
are read off the reference journal: before and after each `llm.*` / `tool.*`
event, `mid:llm` (the model answered, nothing journaled yet), `mid:tool` (after
each effect a tool's test double declared with `record_effect`, and after the
tool function returned), and before `run.completed`.

Each case is checked (see `check_case`) and the report lists what went wrong.
The agent must be deterministic (provider `scripted` or `python`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from everruns.core.events import (
    INTERRUPTED_MESSAGE,
    LLM_COMPLETED,
    LLM_FAILED,
    LLM_STARTED,
    RUN_COMPLETED,
    TERMINAL_STATUSES,
    TOOL_COMPLETED,
    TOOL_FAILED,
    TOOL_STARTED,
    Event,
)
from everruns.core.state import fold, transcript
from everruns.store import Store
from everruns.testing import effects
from everruns.testing._procs import (
    KILLED,
    SpecLike,
    WorkerTimeout,
    as_spec,
    sync_form,
    tail,
    workdir,
    worker_env,
)

BOUNDARY_EVENTS = (
    LLM_STARTED,
    LLM_COMPLETED,
    LLM_FAILED,
    TOOL_STARTED,
    TOOL_COMPLETED,
    TOOL_FAILED,
)


class CrashMatrixError(Exception):
    """The matrix could not be run (the uncrashed reference run did not complete)."""


@dataclass
class CaseResult:
    point: str  # the boundary, as EVERRUNS_CRASH_AT names it; "reference" for the uncrashed run
    run_id: str
    reached: bool  # the first worker died at the boundary
    status: str
    events: list[Event]
    ledger: list[dict[str, Any]]
    violations: list[str] = field(default_factory=list)
    error: str | None = None  # the run's error, when it did not complete

    @property
    def transcript(self) -> list[dict[str, Any]]:
        return transcript(fold(self.events))

    @property
    def outcome(self) -> str:
        if self.violations:
            return "VIOLATION"
        if not self.reached:
            return "not reached"
        interrupted = [
            e.data["name"]
            for e in self.events
            if e.type == TOOL_FAILED and e.data.get("interrupted")
        ]
        repeated = _repeated(self.events)
        parts = []
        if repeated:
            parts.append("repeated " + ", ".join(repeated))
        if interrupted:
            parts.append("outcome unknown: " + ", ".join(interrupted))
        return "ok" + (f" ({'; '.join(parts)})" if parts else "")


@dataclass
class CrashReport:
    agent: str
    reference: CaseResult
    cases: list[CaseResult]

    @property
    def violations(self) -> list[str]:
        return [f"{c.point}: {v}" for c in self.cases for v in c.violations]

    @property
    def ok(self) -> bool:
        return not self.violations

    def table(self) -> str:
        width = max([len(c.point) for c in self.cases] + [8])
        lines = [f"{'boundary'.ljust(width)}  result"]
        lines += [f"{c.point.ljust(width)}  {c.outcome}" for c in self.cases]
        return "\n".join(lines)

    def format(self) -> str:
        bad = sum(1 for c in self.cases if c.violations)
        head = (
            f"crash matrix of agent {self.agent!r}: {len(self.cases)} boundaries, "
            f"{bad} with violations"
        )
        text = f"{head}\n{self.table()}"
        if self.violations:
            text += "\n\nviolations:\n" + "\n".join(f"- {v}" for v in self.violations)
        return text

    def __str__(self) -> str:
        return self.format()


def assert_exactly_once(report: CrashReport) -> None:
    """Fail (AssertionError with the whole report) unless every boundary passed:
    the transcript equals the uncrashed one (an interrupted at_most_once call shows
    "outcome unknown"), no completed LLM step or tool call was executed again, each
    call saw one idempotency key, at_most_once tools ran at most once per call, and no
    effect declared with `record_effect` happened twice for one call."""
    if not report.ok:
        raise AssertionError(report.format())


# ------------------------------------------------------------------ boundaries


def boundaries(events: list[Event], ledger: list[dict[str, Any]]) -> list[str]:
    """The crash points of a reference run, in the order the run reaches them."""
    mid_tool: dict[str, list[int]] = defaultdict(list)  # call id -> its mid:tool hit numbers
    hits = 0
    for entry in ledger:
        if entry["kind"] in ("effect", "returned") and entry.get("call_id"):
            hits += 1
            mid_tool[entry["call_id"]].append(hits)
    seen: Counter[str] = Counter()
    points: list[str] = []
    for event in events:
        if event.type not in BOUNDARY_EVENTS:
            continue
        seen[event.type] += 1
        n = seen[event.type]
        if event.type == LLM_COMPLETED:
            points.append(f"{effects.MID_LLM}#{n}")
        if event.type in (TOOL_COMPLETED, TOOL_FAILED):
            points += [f"{effects.MID_TOOL}#{k}" for k in mid_tool.pop(event.data["call_id"], [])]
        points += [f"before:{event.type}#{n}", f"after:{event.type}#{n}"]
    points.append(f"before:{RUN_COMPLETED}")
    return points


# ------------------------------------------------------------------ checks


def _repeated(events: list[Event]) -> list[str]:
    """Tool calls and LLM steps started more than once (after a takeover)."""
    starts = Counter(
        f"{e.data['name']} ({e.data['call_id']})" for e in events if e.type == TOOL_STARTED
    )
    llm = Counter(e.data.get("step") for e in events if e.type == LLM_STARTED)
    out = [f"LLM step {s}" for s, n in llm.items() if n > 1]
    return out + [name for name, n in starts.items() if n > 1]


def expected_transcript(reference: list[dict[str, Any]], interrupted: set[str]) -> list[Any]:
    """The uncrashed transcript with the interrupted calls' results "outcome unknown"."""
    return [
        {**m, "content": INTERRUPTED_MESSAGE, "is_error": True}
        if m["role"] == "tool" and m["tool_call_id"] in interrupted
        else m
        for m in reference
    ]


def _journal_violations(events: list[Event]) -> list[str]:
    out: list[str] = []
    done_steps: set[int] = set()
    step = 0
    for e in events:
        if e.type == LLM_STARTED:
            step = int(e.data.get("step", 0))
            if step in done_steps:
                out.append(f"LLM step {step} was called again after it completed")
        elif e.type == LLM_COMPLETED:
            done_steps.add(step)
    resolved: dict[str, str] = {}
    for e in events:
        call_id = e.data.get("call_id")
        if e.type == TOOL_STARTED and call_id in resolved:
            out.append(
                f"tool {e.data['name']!r}: call {call_id} started again after its result "
                "was journaled"
            )
        elif e.type in (TOOL_COMPLETED, TOOL_FAILED) and call_id:
            if call_id in resolved:
                out.append(f"tool {e.data['name']!r}: call {call_id} got two results")
            resolved[call_id] = e.type
    return out


def _ledger_violations(ledger: list[dict[str, Any]]) -> list[str]:
    out: list[str] = []
    execs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for entry in ledger:
        if entry["kind"] == "exec":
            execs[entry["call_id"]].append(entry)
    for call_id, runs in execs.items():
        tool, declared = runs[0]["tool"], runs[0]["effect"]
        attempts = ", ".join(str(r["attempt"]) for r in runs)
        if declared == "at_most_once" and len(runs) > 1:
            out.append(
                f"tool {tool!r} (at_most_once), call {call_id}: executed {len(runs)} times "
                f"(attempts {attempts})"
            )
        keys = {r["idempotency_key"] for r in runs}
        if len(keys) > 1:
            out.append(
                f"tool {tool!r}, call {call_id}: given {len(keys)} idempotency keys "
                f"({', '.join(sorted(keys))})"
            )
    made: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for entry in ledger:
        if entry["kind"] == "effect" and entry.get("call_id"):
            made[entry["call_id"]].append(entry)
    for call_id, entries in made.items():
        tool, declared = entries[0]["tool"], entries[0]["declared"]
        by_effect: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for entry in entries:
            by_effect[entry["effect"]].append(entry)
        for effect, same in by_effect.items():
            if len(same) > 1:
                attempts = ", ".join(str(e["attempt"]) for e in same)
                out.append(
                    f"tool {tool!r} (declared {declared}), call {call_id}: duplicated effect "
                    f"{effect!r} happened {len(same)} times (attempts {attempts})"
                )
        used = list(dict.fromkeys(e["key"] for e in entries if e["key"] is not None))
        if len(used) > 1:
            out.append(
                f"tool {tool!r} (declared {declared}), call {call_id}: ignores the idempotency "
                f"key: its effects used {len(used)} different keys ({', '.join(used)}), "
                f"not the call's key {entries[0]['idempotency_key']!r}"
            )
    return out


def check_case(reference: CaseResult, case: CaseResult) -> list[str]:
    """Everything wrong with one crashed case, as messages naming tool and effect."""
    out: list[str] = []
    if case.status != "completed":
        out.append(f"the run ended {case.status}, not completed: {case.error}")
    out += _journal_violations(case.events)
    out += _ledger_violations(case.ledger)
    interrupted = {
        e.data["call_id"]: e.data["name"]
        for e in case.events
        if e.type == TOOL_FAILED and e.data.get("interrupted")
    }
    effect_of = {
        e.data["call_id"]: e.data.get("effect") for e in case.events if e.type == TOOL_STARTED
    }
    for call_id, name in interrupted.items():
        if effect_of.get(call_id) != "at_most_once":
            out.append(f"tool {name!r}: call {call_id} was interrupted but is not at_most_once")
    if case.status == "completed":
        want = expected_transcript(reference.transcript, set(interrupted))
        got = case.transcript
        if interrupted:
            # After an "outcome unknown" result the model may rightly answer otherwise:
            # compare up to that result.
            cut = 1 + max(
                i
                for i, m in enumerate(want)
                if m["role"] == "tool" and m["tool_call_id"] in interrupted
            )
            want, got = want[:cut], got[:cut]
        if got != want:
            out.append(_transcript_difference(want, got))
    return out


def _transcript_difference(want: list[dict[str, Any]], got: list[dict[str, Any]]) -> str:
    for i, (a, b) in enumerate(zip(want, got, strict=False)):
        if a != b:
            return (
                f"transcript differs from the uncrashed run at message {i + 1}: want {a}, got {b}"
            )
    return (
        f"transcript has {len(got)} messages, the uncrashed run {len(want)} "
        f"(first extra: {(got + want)[min(len(got), len(want))]})"
    )


# ------------------------------------------------------------------ running


async def _execute(
    store: Store,
    url: str,
    spec: Any,
    input: str | None,
    point: str | None,
    case_dir: Path,
    lease_ttl: float,
    timeout: float,
) -> CaseResult:
    await asyncio.to_thread(case_dir.mkdir, parents=True, exist_ok=True)
    ledger = case_dir / "ledger.jsonl"
    run_id = await store.create_run(spec, input)
    reached = False
    if point is not None:
        log = case_dir / "worker-killed.log"
        # The killed worker is alone: a shorter lease makes the takeover come sooner.
        code = await _worker(url, run_id, worker_env(ledger, point), log, lease_ttl / 2, timeout)
        reached = code == KILLED
        if not reached and code != 0:
            raise CrashMatrixError(f"{point}: the worker exited with {code}\n{tail(log)}")
    row = await store.get_run(run_id)
    if row.status not in TERMINAL_STATUSES:
        log = case_dir / "worker.log"
        code = await _worker(url, run_id, worker_env(ledger), log, lease_ttl, timeout)
        if code != 0:
            raise CrashMatrixError(
                f"{point or 'reference'}: the worker exited with {code}\n{tail(log)}"
            )
        row = await store.get_run(run_id)
    events = await store.load_events(run_id)
    state = fold(events)
    error = (state.error or {}).get("error") if state.error else None
    return CaseResult(
        point or "reference", run_id, reached, row.status, events, effects.read(ledger), error=error
    )


async def _worker(
    url: str, run_id: str, env: dict[str, str], log: Path, lease_ttl: float, timeout: float
) -> int:
    from everruns.testing._procs import run_worker

    try:
        return await run_worker(url, run_id, env, log, lease_ttl, timeout)
    except WorkerTimeout as exc:
        raise CrashMatrixError(str(exc)) from None


async def acrash_matrix(
    spec: SpecLike,
    input: str | None,
    *,
    db: str | None = None,
    only: Sequence[str] | None = None,
    lease_ttl: float = 1.0,
    concurrency: int = 2,
    timeout: float = 60.0,
    tmp: str | Path | None = None,
) -> CrashReport:
    """The async form of `crash_matrix`."""
    agent = as_spec(spec)
    root = workdir(tmp, "everruns-crash-")

    @contextlib.asynccontextmanager
    async def database(name: str) -> Any:
        url = db or f"sqlite:///{root / name / 'everruns.db'}"
        (root / name).mkdir(parents=True, exist_ok=True)
        store = await Store.open(url)
        try:
            yield store, url
        finally:
            await store.close()

    async with database("reference") as (store, url):
        reference = await _execute(
            store, url, agent, input, None, root / "reference", lease_ttl, timeout
        )
    if reference.status != "completed":
        raise CrashMatrixError(
            f"the uncrashed run of {agent.name!r} ended {reference.status}: {reference.error}"
        )
    points = boundaries(reference.events, reference.ledger)
    if only:
        points = [p for p in points if any(s in p for s in only)]
    limit = asyncio.Semaphore(concurrency)

    async def one(index: int, point: str) -> CaseResult:
        name = f"{index:02d}-{point.replace(':', '_').replace('#', '_')}"
        async with limit, database(name) as (store, url):
            case = await _execute(store, url, agent, input, point, root / name, lease_ttl, timeout)
        case.violations = check_case(reference, case)
        return case

    cases = await asyncio.gather(*(one(i, p) for i, p in enumerate(points)))
    return CrashReport(agent.name, reference, list(cases))


crash_matrix = sync_form(
    acrash_matrix,
    "crash_matrix",
    """Crash the agent at every boundary and report what each crash did.

`spec`: an AgentSpec, a YAML path or a mapping; `input`: the user message.
`db`: a database URL shared by all cases (e.g. PostgreSQL); default: a fresh
SQLite file per case under `tmp`. `only`: keep the boundaries containing one of
these strings (e.g. `["tool"]`). `lease_ttl`: the workers' lease (a takeover
waits for it). Check the report with `assert_exactly_once(report)`.
""",
)
