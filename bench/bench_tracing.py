"""What observability costs per durable step: none vs tracing off vs tracing on, one run.

Three variants of the same engine, measured side by side and interleaved (round-robin,
so the machine's load drifts over all of them alike), SQLite, in-process `Worker`,
the workload of `bench_engine.py` section 2 (scripted answers calling a no-op tool):

* `none`  — the run log has no observer (the engine before issue 18: no metrics, no spans);
* `off`   — the default: metrics counted per committed event, tracing off (OTEL_* unset);
* `on`    — tracing on, spans built and handed to the OpenTelemetry SDK's batch
  processor, exported to a null exporter (the SDK's full cost, no network).

Per step = journal-timed (bench_engine.step_times). Each round gives one median per variant;
reported: the median of the round medians, their min-max, and the overhead against `none`.
Because end-to-end timings on a shared machine are noisy at the 1 % level, the hook's own
CPU cost is also measured directly (µs per committed event, tight loop), which bounds the
overhead from above: events per step x µs per event / ms per step.

    .venv/bin/python bench/bench_tracing.py        # ~1-2 minutes
    EVERRUNS_BENCH_ROUNDS=9 EVERRUNS_BENCH_STEPS=200 .venv/bin/python bench/bench_tracing.py
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from bench_engine import agent, run_in_process, step_times, table
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from everruns.core.events import Event, EventType
from everruns.core.state import fold
from everruns.engine import runner, tracing
from everruns.engine.observe import RunObserver
from everruns.engine.otel import OtelSink
from everruns.store import Store

ROUNDS = int(os.environ.get("EVERRUNS_BENCH_ROUNDS", "5"))
TOOL_STEPS = int(os.environ.get("EVERRUNS_BENCH_STEPS", "100"))  # 2n+1 durable steps a run


class NullExporter(SpanExporter):
    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


EXPORTER = NullExporter()
SINK = OtelSink.from_env({}, exporter=EXPORTER)


def configure(variant: str) -> None:
    if variant == "none":
        runner.RunObserver = lambda *a, **k: None  # type: ignore[assignment,misc]
        tracing.set_sink(None)
    else:
        runner.RunObserver = RunObserver  # type: ignore[misc]
        tracing.set_sink(SINK if variant == "on" else None)


async def one_round(tmp: Path, n: int, variants: list[str]) -> dict[str, float]:
    out = {}
    for variant in variants:
        configure(variant)
        store = await Store.open(f"sqlite:///{tmp}/r{n}-{variant}.db")
        try:
            await run_in_process(store, agent("warmup", 3))
            run_id = await run_in_process(store, agent(f"steps-{variant}", TOOL_STEPS))
            out[variant] = statistics.median(await step_times(store, run_id)) * 1000
        finally:
            await store.close()
    return out


def hook_cost(variant: str, repeat: int = 2000) -> float:
    """µs of observer work per committed event (a tool step's and an LLM step's events)."""
    configure(variant)
    journal = [
        Event(1, EventType.RUN_CREATED, 1.0, {"input": "x"}),
        Event(2, EventType.RUN_STARTED, 1.0, {"epoch": 1}),
    ]
    state = fold(journal)
    step = [
        (EventType.LLM_STARTED, {"attempt": 1, "step": 1, "model": "scripted:script"}),
        (
            EventType.LLM_COMPLETED,
            {
                "attempt": 1,
                "message": {"role": "assistant", "content": None},
                "usage": {"input_tokens": 10, "output_tokens": 5, "cost_usd": 0.0},
                "model": "scripted:script",
                "stop_reason": "tool_use",
            },
        ),
        (EventType.TOOL_STARTED, {"call_id": "c1", "name": "noop", "effect": "pure"}),
        (EventType.TOOL_COMPLETED, {"call_id": "c1", "name": "noop", "output": "{}"}),
    ]
    observer = RunObserver("run_bench", "bench", 1, "w")
    observer.loaded(journal, state)
    events = [Event(3 + i, kind, 2.0 + i, data) for i, (kind, data) in enumerate(step)]
    started = time.perf_counter()
    for _ in range(repeat):
        for event in events:
            observer.committed(event, state)
    return (time.perf_counter() - started) / (repeat * len(events)) * 1e6


async def main() -> int:
    variants = ["none", "off", "on"]
    print(
        f"observability overhead per durable step: {ROUNDS} rounds x {len(variants)} variants, "
        f"{2 * TOOL_STEPS + 1}-step runs, SQLite, load {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    rounds: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="everruns-bench-tracing-") as tmpdir:
        for n in range(ROUNDS):
            order = variants[n % 3 :] + variants[: n % 3]  # rotate who goes first
            rounds.append(await one_round(Path(tmpdir), n, order))
            print(f"  round {n + 1}: " + ", ".join(f"{v} {rounds[-1][v]:.3f} ms" for v in variants))
    SINK.flush()
    base = statistics.median(r["none"] for r in rounds)
    rows = []
    for v in variants:
        values = [r[v] for r in rounds]
        med = statistics.median(values)
        paired = statistics.median(r[v] / r["none"] - 1 for r in rounds) * 100
        rows.append([v, f"{med:.3f}", f"{min(values):.3f}-{max(values):.3f}", f"{paired:+.1f}%"])
    print("\nEnd to end, ms per durable step (median of round medians; paired overhead vs none):")
    print(table(["variant", "step p50", "min-max", "vs none"], rows))
    print(f"(spans exported by the `on` variant: {EXPORTER.spans})")
    rows = []
    for v in ("off", "on"):
        costs = [hook_cost(v) for _ in range(5)]
        us = statistics.median(costs)
        bound = 2 * us / 1000 / base * 100  # two committed events per durable step
        rows.append([v, f"{us:.2f}", f"{min(costs):.2f}-{max(costs):.2f}", f"{bound:.2f}%"])
    print("\nThe hook alone, µs per committed event (2 per step), as a share of the step:")
    print(table(["variant", "us/event p50", "min-max", "share of step"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
