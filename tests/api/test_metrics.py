"""`/metrics` scraped while runs execute and after: the counters move as the journal says."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from everruns.core.events import EventType
from everruns.spec import load_spec
from everruns.store import Store
from helpers import Server, env_for, wait_until, write_agent


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = httpx.get(url + "/metrics", timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


async def test_metrics_follow_the_journal(tmp_path: Path, db_url: str) -> None:
    spec = load_spec(
        write_agent(
            tmp_path / "agent.yaml",
            [
                {
                    "tool_calls": [
                        {"name": "note", "arguments": {"text": "x"}},
                        {"name": "sleep", "arguments": {"seconds": 0.2, "reason": "nap"}},
                    ],
                    "delay": 1.5,
                    "usage": {"input_tokens": 10, "output_tokens": 4},
                },
                {"text": "done", "usage": {"input_tokens": 20, "output_tokens": 6}},
            ],
            [{"builtin": "notes"}, {"builtin": "sleep"}],
            name="metered",
        )
    )
    failing = load_spec(
        write_agent(
            tmp_path / "fails.yaml",
            [{"error": "nope", "error_class": "bad_request"}],
            name="failing",
        )
    )
    server = Server(env_for(db_url), "--lease-ttl", "2", log=tmp_path / "server.log")
    store = await Store.open(db_url)
    try:
        run_ids = [await store.create_run(spec, "go") for _ in range(2)]
        failed_id = await store.create_run(failing, "go")

        async def in_flight() -> bool:
            s = scrape(server.url)
            return value(s, "everruns_runs", status="running", agent="metered") >= 1

        await wait_until(in_flight, timeout=30, interval=0.05, what="a run in flight")
        during = scrape(server.url)
        assert value(during, "everruns_inflight_runs") >= 1
        assert value(during, "everruns_worker_leased_runs") >= 1
        assert value(during, "everruns_workers") == 1

        async def finished() -> bool:
            rows = [await store.get_run(r) for r in [*run_ids, failed_id]]
            return all(r.status in ("completed", "failed") for r in rows)

        await wait_until(finished, timeout=60, what="the runs to end")
        journals = {r: await store.load_events(r) for r in [*run_ids, failed_id]}

        # The counters are incremented as events commit; the last commit may still be
        # publishing when the row reads completed: wait for the counters, then compare.
        async def counted() -> bool:
            s = scrape(server.url)
            return value(s, "everruns_run_completions_total", agent="metered") == 2

        await wait_until(counted, timeout=20, what="the completions to be counted")
        after = scrape(server.url)
    finally:
        server.stop()
        await store.close()

    events = [e for js in journals.values() for e in js]

    def count(kind: str) -> int:
        return sum(1 for e in events if e.type == kind)

    llm_done = [e for e in events if e.type == EventType.LLM_COMPLETED]
    assert value(after, "everruns_runs", status="completed", agent="metered") == 2
    assert value(after, "everruns_runs_by_status", status="failed") == 1
    assert value(after, "everruns_run_starts_total", agent="metered", kind="fresh") == 2
    (failure,) = [e for e in events if e.type == EventType.RUN_FAILED]
    reason = failure.data["reason"]
    assert value(after, "everruns_run_failures_total", agent="failing", reason=reason) == 1
    assert value(after, "everruns_provider_errors_total", error_class="bad_request") == count(
        EventType.LLM_FAILED
    )
    assert value(after, "everruns_llm_tokens_total", provider="scripted", kind="input") == sum(
        e.data["usage"]["input_tokens"] for e in llm_done
    )
    assert value(after, "everruns_llm_tokens_total", kind="output") == sum(
        e.data["usage"]["output_tokens"] for e in llm_done
    )
    assert value(after, "everruns_llm_call_seconds_count", outcome="ok") == len(llm_done)
    # The first answer took its 1.5 s delay: both runs' first calls land above 1 s.
    assert value(after, "everruns_llm_call_seconds_bucket", outcome="ok", le="1.0") <= 2
    assert value(after, "everruns_llm_ttft_seconds_count") >= 2
    notes = [e for e in events if e.type == EventType.TOOL_STARTED and e.data["name"] == "note"]
    assert value(after, "everruns_tool_seconds_count", tool="note", outcome="ok") == len(notes)
    assert count(EventType.TOOL_WAITING) == 2
    assert value(after, "everruns_durable_waits_total", kind="nap") == 2
    assert value(after, "everruns_tool_seconds_count", tool="sleep", outcome="waiting") == 2
    assert value(after, "everruns_journal_append_seconds_count") >= len(run_ids) * 3
    assert value(after, "everruns_queue_depth") == 0
    assert value(after, "everruns_queue_oldest_runnable_seconds") == 0
    assert value(after, "everruns_inflight_runs") == 0


async def test_the_grafana_dashboard_only_uses_metrics_that_exist(sqlite_url: str) -> None:
    import json
    import re

    from everruns.api.metrics import exposition

    store = await Store.open(sqlite_url)
    try:
        text = (await exposition(store)).decode()
    finally:
        await store.close()
    exported = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    exported |= {f.name for f in text_string_to_metric_families(text)}
    # Families with no samples yet (no label values seen) still announce themselves.
    exported |= set(re.findall(r"^# TYPE (\S+)", text, re.M))
    dashboard = (Path(__file__).parents[2] / "docs" / "grafana-dashboard.json").read_text()
    used = set(re.findall(r"everruns_[a-z_]+", json.dumps(json.loads(dashboard))))
    suffixes = ("_bucket", "_count", "_sum", "_total")
    missing = {
        name
        for name in used
        if name not in exported and not any(name.removesuffix(s) in exported for s in suffixes)
    }
    assert not missing, missing
