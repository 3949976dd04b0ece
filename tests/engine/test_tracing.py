"""Traces: the spans a real worker exports over OTLP/HTTP to a real receiver.

The receiver (tests/helpers.py `OtlpReceiver`) decodes the protobuf with
opentelemetry-proto, so what is asserted is what Jaeger or Tempo would get.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from everruns.core.events import Event, EventType
from everruns.core.state import fold
from everruns.engine import tracing
from everruns.engine.tracing import RunTracer, SpanRecord
from everruns.spec import load_spec
from everruns.store import Store
from helpers import (
    OtlpReceiver,
    env_for,
    free_port,
    start_worker,
    stop,
    wait_until,
    write_agent,
)
from waterfall import render_svg


@pytest.fixture
def receiver() -> Any:
    r = OtlpReceiver()
    yield r
    r.close()


def _by_name(spans: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    return [s for s in spans if s["name"].startswith(prefix)]


async def _status(store: Store, run_id: str) -> str:
    return (await store.get_run(run_id)).status


async def test_a_run_with_a_tool_and_a_sub_agent_is_one_trace_linked_to_the_childs(
    tmp_path: Path, sqlite_url: str, receiver: OtlpReceiver
) -> None:
    child = {
        "name": "child",
        "model": {
            "provider": "scripted",
            "responses": [
                {
                    "text": "child done",
                    "delay": 0.3,
                    "usage": {"input_tokens": 7, "output_tokens": 3},
                }
            ],
        },
    }
    spec = write_agent(
        tmp_path / "parent.yaml",
        [
            {
                "tool_calls": [{"name": "show_trace", "arguments": {}}],
                "usage": {"input_tokens": 11, "output_tokens": 5},
                "delay": 0.3,
            },
            {
                "tool_calls": [
                    {"name": "spawn_agent", "arguments": {"input": "help", "spec": child}}
                ],
                "usage": {"input_tokens": 13, "output_tokens": 6},
                "delay": 0.3,
            },
            {"text": "all done", "usage": {"input_tokens": 17, "output_tokens": 4}, "delay": 0.3},
        ],
        [{"python": "tracetools:show_trace"}, {"builtin": "subagents"}],
        name="parent",
    )
    env = env_for(
        sqlite_url, **receiver.env(OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT="true")
    )
    store = await Store.open(sqlite_url)
    port = free_port()
    worker = start_worker(
        env, "--poll-interval", "0.05", "--metrics-port", str(port), log=tmp_path / "worker.log"
    )
    try:

        async def worker_up() -> bool:
            return bool(await store.list_workers())

        await wait_until(worker_up, timeout=60, what="the worker")  # the trace starts at creation
        run_id = await store.create_run(load_spec(spec), "go")

        async def both_done() -> bool:
            runs = await store.list_runs()
            return len(runs) == 2 and all(r.status == "completed" for r in runs)

        await wait_until(both_done, timeout=60, what="parent and child completed")
        events = await store.load_events(run_id)
        (child_id,) = [e.data["child"] for e in events if e.data.get("child")]
        # The worker's own metrics endpoint counted the same runs.
        scraped = await asyncio.to_thread(_text, f"http://127.0.0.1:{port}/metrics")
        assert 'everruns_run_completions_total{agent="parent"} 1.0' in scraped
        assert 'everruns_run_completions_total{agent="child"} 1.0' in scraped
        assert 'everruns_tool_seconds_count{outcome="ok",tool="show_trace"} 1.0' in scraped
    finally:
        assert stop(worker) == 0, (tmp_path / "worker.log").read_text()[-3000:]
        await store.close()

    def received() -> bool:
        return len(_by_name(receiver.spans, "invoke_agent")) == 2

    await wait_until(_async(received), timeout=20, what="both root spans")
    spans = receiver.spans
    trace = tracing.trace_id(run_id)
    parent_spans = [s for s in spans if s["trace_id"] == f"{trace:032x}"]
    child_spans = [s for s in spans if s["trace_id"] == f"{tracing.trace_id(child_id):032x}"]
    assert len(parent_spans) + len(child_spans) == len(spans), "two traces, nothing else"
    names = sorted(s["name"] for s in parent_spans)
    assert names == [
        "chat script",
        "chat script",
        "chat script",
        "execute_tool show_trace",
        "execute_tool spawn_agent",
        "invoke_agent parent",
    ]
    (root,) = _by_name(parent_spans, "invoke_agent")
    assert root["parent_id"] is None and root["status"] == "unset"
    assert root["span_id"] == f"{tracing.root_span_id(run_id):016x}"
    assert all(s["parent_id"] == root["span_id"] for s in parent_spans if s is not root)
    assert all(root["start"] <= s["start"] <= s["end"] <= root["end"] for s in parent_spans)
    assert root["attributes"]["gen_ai.operation.name"] == "invoke_agent"
    assert root["attributes"]["gen_ai.agent.name"] == "parent"
    assert root["attributes"]["gen_ai.usage.input_tokens"] == 11 + 13 + 17
    assert root["attributes"]["gen_ai.usage.output_tokens"] == 5 + 6 + 4
    assert root["service"] == "everruns-test"
    chats = sorted(_by_name(parent_spans, "chat "), key=lambda s: s["start"])
    assert [c["attributes"]["gen_ai.usage.input_tokens"] for c in chats] == [11, 13, 17]
    assert [c["attributes"]["gen_ai.usage.output_tokens"] for c in chats] == [5, 6, 4]
    for chat in chats:
        attrs = chat["attributes"]
        assert attrs["gen_ai.operation.name"] == "chat"
        assert attrs["gen_ai.provider.name"] == "scripted"
        assert attrs["gen_ai.request.model"] == "script"
        assert attrs["everruns.run.id"] == run_id
        assert attrs["everruns.attempt"] == 1 and attrs["everruns.epoch"] == 1
        assert chat["kind"] == 3  # CLIENT
        assert "gen_ai.input.messages" in attrs  # capture is on in this test
    assert chats[-1]["attributes"]["gen_ai.response.finish_reasons"] == ["end_turn"]
    assert json.loads(chats[-1]["attributes"]["gen_ai.output.messages"])[0]["content"] == (
        "all done"
    )
    (tool,) = _by_name(parent_spans, "execute_tool show_trace")
    assert tool["attributes"]["gen_ai.operation.name"] == "execute_tool"
    assert tool["attributes"]["gen_ai.tool.name"] == "show_trace"
    assert tool["attributes"]["everruns.effect"] == "idempotent"
    started = next(e for e in events if e.type == EventType.TOOL_STARTED)
    assert tool["attributes"]["gen_ai.tool.call.id"] == started.data["call_id"]
    # The Python tool was handed the W3C context of its own span.
    assert tool["attributes"]["gen_ai.tool.call.result"] == (
        f"00-{tool['trace_id']}-{tool['span_id']}-01"
    )
    (spawn,) = _by_name(parent_spans, "execute_tool spawn_agent")
    assert spawn["attributes"]["everruns.child_run.id"] == child_id
    # The child's trace: its own root, linked to the parent's spawn span.
    (child_root,) = _by_name(child_spans, "invoke_agent")
    assert child_root["links"] == [(spawn["trace_id"], spawn["span_id"])]
    (child_chat,) = _by_name(child_spans, "chat ")
    assert child_chat["parent_id"] == child_root["span_id"]
    assert child_chat["attributes"]["gen_ai.usage.input_tokens"] == 7
    _waterfall(parent_spans + child_spans, tmp_path / "trace-waterfall.svg")


async def test_a_run_killed_mid_llm_call_is_one_trace_with_the_cut_attempt_an_error(
    tmp_path: Path, sqlite_url: str, receiver: OtlpReceiver
) -> None:
    spec = write_agent(
        tmp_path / "slow.yaml",
        [{"text": "finally", "delay": 2, "usage": {"input_tokens": 9, "output_tokens": 2}}],
        name="slow",
    )
    env = env_for(sqlite_url, **receiver.env())
    store = await Store.open(sqlite_url)
    run_id = await store.create_run(load_spec(spec), "go")
    args = ("--lease-ttl", "1", "--poll-interval", "0.05")
    # Two workers: whichever claims the run is killed mid-call, the other takes it over.
    ports = [free_port(), free_port()]
    workers = [
        start_worker(env, *args, "--metrics-port", str(port), log=tmp_path / f"w{i}.log")
        for i, port in enumerate(ports)
    ]
    try:

        async def llm_started() -> bool:
            return any(e.type == EventType.LLM_STARTED for e in await store.load_events(run_id))

        await wait_until(llm_started, timeout=30, interval=0.05, what="the first LLM call")
        owner = (await store.get_run(run_id)).lease_owner or ""
        (holder,) = [w for w in workers if f"-{w.pid}-" in owner]
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        (survivor,) = [w for w in workers if w is not holder]

        async def completed() -> bool:
            return await _status(store, run_id) == "completed"

        await wait_until(completed, timeout=60, what="the takeover to complete the run")
        events = await store.load_events(run_id)
        port = ports[workers.index(survivor)]
        scraped = await asyncio.to_thread(_text, f"http://127.0.0.1:{port}/metrics")
        assert 'everruns_takeovers_total{agent="slow"} 1.0' in scraped
        assert 'everruns_run_starts_total{agent="slow",kind="takeover"} 1.0' in scraped
        assert "everruns_takeover_seconds_count 1.0" in scraped
    finally:
        for w in workers:
            stop(w)
        await store.close()

    await wait_until(
        _async(lambda: bool(_by_name(receiver.spans, "invoke_agent"))), timeout=20, what="root"
    )
    spans = receiver.spans
    assert {s["trace_id"] for s in spans} == {f"{tracing.trace_id(run_id):032x}"}, "one trace"
    starts = [e for e in events if e.type == EventType.LLM_STARTED]
    assert len(starts) == 2, "the call was made again by the second worker"
    chats = sorted(_by_name(spans, "chat "), key=lambda s: s["start"])
    assert [c["span_id"] for c in chats] == [
        f"{tracing.atom_span_id(run_id, e.seq):016x}" for e in starts
    ]
    cut, done = chats
    assert cut["status"] == "error" and "cut off" in cut["status_message"]
    assert cut["attributes"]["error.type"] == "cut_off"
    assert cut["attributes"]["everruns.epoch"] == 2, "closed by the second holder"
    assert done["status"] == "unset"
    assert survivor.returncode == 0
    assert done["attributes"]["gen_ai.usage.input_tokens"] == 9
    (root,) = _by_name(spans, "invoke_agent")
    assert root["attributes"]["everruns.starts"] == 2
    assert all(s["parent_id"] == root["span_id"] for s in chats)


# ------------------------------------------------------------------ RunTracer (pure)


class ListSink:
    def __init__(self, capture_content: bool = False):
        self.capture_content = capture_content
        self.spans: list[SpanRecord] = []

    def emit(self, span: SpanRecord) -> None:
        self.spans.append(span)

    def flush(self, timeout_ms: int = 5000) -> bool:
        return True


def _journal() -> list[Event]:
    rows: list[tuple[str, dict[str, Any]]] = [
        (EventType.RUN_CREATED, {"input": "hi", "agent": "a"}),
        (EventType.RUN_STARTED, {"epoch": 1}),
        (EventType.LLM_STARTED, {"attempt": 1, "step": 1, "model": "openai:gpt-x"}),
        (
            EventType.LLM_COMPLETED,
            {
                "attempt": 1,
                "message": {"role": "assistant", "content": "secret answer"},
                "usage": {"input_tokens": 3, "output_tokens": 1, "cost_usd": 0.5},
                "model": "openai:gpt-x-2025",
                "stop_reason": "stop",
            },
        ),
        (EventType.RUN_COMPLETED, {"result": "secret answer"}),
    ]
    return [Event(i + 1, kind, 100.0 + i, data) for i, (kind, data) in enumerate(rows)]


def test_message_content_is_captured_only_when_asked() -> None:
    journal = _journal()
    for capture in (False, True):
        sink = ListSink(capture)
        tracer = RunTracer(sink, "run_x", "a", 1, "w1")
        tracer.loaded(journal[:1], fold(journal[:1]))
        for i, event in enumerate(journal[1:], start=2):
            tracer.committed(event, fold(journal[:i]))
        chat, root = sink.spans
        assert chat.name == "chat gpt-x" and root.name == "invoke_agent a"
        assert chat.attributes["gen_ai.response.model"] == "gpt-x-2025"
        assert chat.attributes["everruns.cost_usd"] == 0.5
        text = repr([s.attributes for s in sink.spans])
        assert ("secret answer" in text) is capture


def test_a_follow_up_turn_is_a_new_root_span_in_the_same_trace() -> None:
    journal = _journal()
    more = [
        Event(6, EventType.MESSAGE_USER, 200.0, {"content": "again"}),
        Event(7, EventType.RUN_COMPLETED, 201.0, {"result": "ok"}),
    ]
    sink = ListSink()
    tracer = RunTracer(sink, "run_x", "a", 2, "w1")
    tracer.loaded(journal, fold(journal))
    for i, event in enumerate(more, start=len(journal) + 1):
        tracer.committed(event, fold(journal + more[: i - len(journal)]))
    (root,) = sink.spans
    assert root.span_id == tracing.root_span_id("run_x", 1) != tracing.root_span_id("run_x")
    assert root.start == 200.0 and root.trace_id == tracing.trace_id("run_x")


def test_tracing_is_off_without_otel_variables() -> None:
    assert not tracing.enabled({})
    assert not tracing.enabled({"OTEL_SERVICE_NAME": "x"})
    assert tracing.enabled({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://h:4318"})
    assert tracing.enabled({"OTEL_TRACES_EXPORTER": "console"})
    assert not tracing.enabled({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "x"})
    assert not tracing.enabled({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "x"})
    assert tracing.parse_traceparent(tracing.traceparent(5, 7)) == (5, 7)
    assert tracing.parse_traceparent("garbage") is None


def _text(url: str) -> str:
    return httpx.get(url, timeout=10).text


def _async(predicate: Any) -> Any:
    async def check() -> bool:
        return bool(predicate())

    return check


def _waterfall(spans: list[dict[str, Any]], path: Path) -> None:
    """The received spans as a small SVG waterfall, a test artifact (docs/observability.md
    shows one: set EVERRUNS_WATERFALL_OUT to keep a copy there)."""
    svg = render_svg(spans)
    assert svg.count("<rect") >= len(spans)
    path.write_text(svg)
    extra = os.environ.get("EVERRUNS_WATERFALL_OUT")
    if extra:
        Path(extra).write_text(svg)


def test_without_otel_variables_the_sdk_is_never_imported() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    code = (
        "import sys\n"
        "from everruns.engine import runner, tracing\n"
        "assert tracing.sink() is None\n"
        "assert runner.RunObserver('r', 'a', 1, 'w').tracer is None\n"
        "loaded = [m for m in sys.modules if m.startswith(('opentelemetry.sdk', 'everruns.engine.otel'))]\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_api_requests_on_a_run_are_server_spans_linked_to_it(sqlite_url: str) -> None:
    from fastapi.testclient import TestClient

    from everruns.api.app import ApiConfig, create_app

    sink = ListSink()
    tracing.set_sink(sink)
    try:
        app = create_app(ApiConfig(database_url=sqlite_url, embedded_worker=False))
        with TestClient(app, base_url="http://127.0.0.1") as client:
            parent = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"
            r = client.get("/v1/runs/run_nope/events", headers={"traceparent": parent})
            assert r.status_code == 404
            assert client.get("/v1/health").status_code == 200  # not a run: no span
    finally:
        tracing.set_sink(None)
    (span,) = sink.spans
    assert span.name == "GET /v1/runs/{run_id}/events" and span.kind == "server"
    assert (span.trace_id, span.parent_id) == (int("ab" * 16, 16), int("cd" * 8, 16))
    assert span.links == [(tracing.trace_id("run_nope"), tracing.root_span_id("run_nope"))]
    assert span.attributes["http.response.status_code"] == 404
    assert span.attributes["everruns.run.id"] == "run_nope"


def test_an_unsupported_protocol_is_named_and_tracing_stays_off(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    monkeypatch.setattr(tracing, "_CONFIGURED", False)
    monkeypatch.setattr(tracing, "_SINK", None)
    assert tracing.sink() is None
    assert "'http/json' is not supported" in caplog.text
