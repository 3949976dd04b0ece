"""The SDK core's pure logic: SSE parsing, the stream's exactly-once bookkeeping, the
reconnect policy, problem details. (The shells over it are tested against real servers.)"""

from __future__ import annotations

import json

import httpx
import pytest

from everruns.client import ApiError, core


def _sse(seq: int | None, kind: str, **data: object) -> list[str]:
    body = json.dumps({"run_id": "run_1", "seq": seq, "type": kind, "data": data})
    head = [f"id: {seq}"] if seq is not None else []
    return [*head, "event: message", f"data: {body}", ""]


def test_sse_parser_joins_data_lines_skips_comments_and_resets() -> None:
    parser = core.SseParser()
    lines = [": connected", "", "id: 3", "data: a", "data:b", "", "data: c", ""]
    got = [m for m in map(parser.feed, lines) if m is not None]
    assert got == [("3", None, "a\nb"), (None, None, "c")]


def test_event_stream_delivers_each_durable_event_once_in_order() -> None:
    stream = core.EventStream("run_1", 0, True, None, core.RetryPolicy())
    assert stream.request_headers() == {}
    lines = [*_sse(1, "run.created"), *_sse(None, "llm.delta", text="hi"), *_sse(2, "llm.started")]
    got = [e for e in map(stream.feed, lines) if e is not None]
    assert [(e.seq, e.type, e.ephemeral) for e in got] == [
        (1, "run.created", False),
        (None, "llm.delta", True),
        (2, "llm.started", False),
    ]
    assert stream.connection_lost() == 0.5
    # The reconnect asks for what came after 2; a replay of 1 and 2 is dropped.
    assert stream.request_headers() == {"Last-Event-ID": "2"}
    replay = [*_sse(1, "run.created"), *_sse(2, "llm.started"), *_sse(3, "run.completed")]
    got = [e for e in map(stream.feed, replay) if e is not None]
    assert [e.seq for e in got] == [3] and stream.ended
    assert stream.failures == 0, "progress resets the failure count"


def test_event_stream_can_leave_out_token_deltas() -> None:
    stream = core.EventStream("run_1", 0, False, None, core.RetryPolicy())
    lines = [*_sse(None, "llm.delta", text="hi"), *_sse(1, "run.created")]
    assert [e.seq for e in map(stream.feed, lines) if e is not None] == [1]


def test_reconnect_backoff_is_capped_and_max_reconnects_gives_up() -> None:
    policy = core.RetryPolicy(delay=2.0, max_delay=5.0)
    assert [policy.backoff(n) for n in (1, 2, 3, 10)] == [2.0, 4.0, 5.0, 5.0]
    stream = core.EventStream("run_1", 0, True, 2, policy)
    assert [stream.connection_lost() for _ in range(3)] == [2.0, 4.0, None]


def test_problem_details_become_api_error() -> None:
    problem = {"type": "https://everruns.dev/problems/run-not-found", "title": "Run not found"}
    response = httpx.Response(404, json={**problem, "detail": "no run with id 'x'"})
    with pytest.raises(ApiError) as info:
        core.get_run("x").result(response)
    assert (info.value.status, info.value.detail) == (404, "no run with id 'x'")
    assert info.value.type.endswith("/run-not-found")
    with pytest.raises(ApiError) as info:
        core.raise_for(httpx.Response(502, text="<html>bad gateway</html>"))
    assert info.value.status == 502 and "bad gateway" in info.value.detail


def test_calls_carry_only_the_given_fields() -> None:
    call = core.start_run("a", None, None, 2)
    assert (call.method, call.path, call.body) == ("POST", "/v1/runs", {"agent": "a", "version": 2})
    assert core.decide("r", "c", approve=False, reason="no").body == {
        "approve": False,
        "reason": "no",
    }
    assert core.list_runs(None, None, 50, None).params == {"limit": 50}


def test_state_changing_calls_carry_a_key_and_are_retried_safely() -> None:
    from everruns.client import core as sdk

    call = sdk.message("run_1", "hi")
    again = sdk.message("run_1", "hi", idempotency_key="mine")
    assert call.key and call.headers() == {"Idempotency-Key": call.key}
    assert again.headers() == {"Idempotency-Key": "mine"}
    assert sdk.get_run("run_1").headers() == {}
    policy = sdk.SendPolicy(attempts=3, delay=0.1, max_delay=0.15)
    server_error = httpx.Response(503)
    assert policy.retry_after(1, None) == 0.1  # a connection error
    assert policy.retry_after(2, server_error) == 0.15
    assert policy.retry_after(3, server_error) is None  # out of attempts
    assert policy.retry_after(1, httpx.Response(422)) is None  # the answer stands


def test_the_sync_client_retries_a_5xx_with_the_same_key() -> None:
    import http.server
    import threading

    from everruns import Client

    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            seen.append(self.headers["Idempotency-Key"])
            body = b'{"run_id": "r", "seq": 3, "type": "message.user", "ts": 1, "data": {}}'
            self.send_response(503 if len(seen) == 1 else 201)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        with Client(f"http://127.0.0.1:{httpd.server_address[1]}") as client:
            assert client.runs.message("r", "hi").seq == 3
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert len(seen) == 2 and seen[0] == seen[1]
