"""Helpers for tests that drive real `everruns` processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import yaml

TOOLING = Path(__file__).parent / "tooling"


def env_for(db_url: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["EVERRUNS_DATABASE_URL"] = db_url
    env["PYTHONPATH"] = os.pathsep.join([str(TOOLING), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep
    )
    env.pop("EVERRUNS_CRASH_AT", None)
    env["EVERRUNS_SETTINGS"] = str(TOOLING / "settings.yaml")
    env.update(extra)
    return env


def write_agent(
    path: Path, responses: list[dict[str, Any]], tools: list[Any] | None = None, **fields: Any
) -> Path:
    spec = {
        "name": fields.pop("name", "test-agent"),
        "model": {"provider": "scripted", "responses": responses},
        "tools": tools or [],
        **fields,
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def cli(
    *args: str, env: dict[str, str], cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "everruns.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_worker(
    env: dict[str, str], *args: str, cwd: Path | None = None, log: Path | None = None
) -> subprocess.Popen[bytes]:
    out = open(log, "ab") if log else subprocess.DEVNULL
    return subprocess.Popen(
        [sys.executable, "-m", "everruns.cli", "worker", *args],
        env=env,
        cwd=cwd,
        stdout=out,
        stderr=out,
    )


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 20) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(5)


def read_ledger(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def wait_until(
    predicate: Callable[[], Awaitable[bool]],
    timeout: float = 30,
    interval: float = 0.1,
    what: str = "condition",
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """`everruns server` on a free loopback port; stdout and stderr go to `log`."""

    def __init__(self, env: dict[str, str], *args: str, log: Path, port: int | None = None):
        self.env = env
        self.args = args
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.proc = self._spawn()

    def _spawn(self) -> subprocess.Popen[bytes]:
        with open(self.log, "ab") as out:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "everruns.cli",
                    "server",
                    "--port",
                    str(self.port),
                    *self.args,
                ],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            try:
                if httpx.get(self.url + "/v1/health", timeout=1).status_code == 200:
                    return proc
            except httpx.HTTPError:
                time.sleep(0.1)
        stop(proc)
        raise AssertionError(f"server did not start: {self.log.read_text()[-3000:]}")

    def restart(self) -> None:
        """SIGKILL the process and start it again on the same port."""
        self.proc.kill()
        self.proc.wait(10)
        self.proc = self._spawn()

    def stop(self) -> None:
        stop(self.proc)


def openai_stream(text: str, prompt_tokens: int, completion_tokens: int) -> bytes:
    """A complete OpenAI chat-completions SSE body answering `text`, usage in the last chunk
    (for loopback fake servers that record what they were sent)."""
    chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "gpt-4.1"}
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    parts = [
        {**chunk, "choices": [{"index": 0, "delta": {"role": "assistant"}}]},
        {**chunk, "choices": [{"index": 0, "delta": {"content": text}}]},
        {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {**chunk, "choices": [], "usage": usage},
    ]
    return ("".join(f"data: {json.dumps(p)}\n\n" for p in parts) + "data: [DONE]\n\n").encode()


def openai_chat_sse(
    out: dict[str, Any], usage: tuple[int, int], gates: Sequence[Any] = ()
) -> Iterator[bytes]:
    """The server-sent events of a streamed chat completion answering `out` (`content`
    and/or `tool_calls`), usage in the last chunk. The content goes word by word: the first
    word once `gates[0]` is set, the others once `gates[1]` is (threading.Events, if given)."""
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": "gpt-4.1"}

    def event(delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> bytes:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
        return f"data: {json.dumps({**base, 'choices': choices, **extra})}\n\n".encode()

    yield event({"role": "assistant", "content": ""})
    words = out["content"].split(" ") if out.get("content") else []
    for i, word in enumerate(words):
        if i < 2 and i < len(gates):
            gates[i].wait(30)
        yield event({"content": word if i == 0 else " " + word})
    for i, call in enumerate(out.get("tool_calls") or []):
        function = {"name": call["name"], "arguments": json.dumps(call["arguments"])}
        yield event(
            {
                "tool_calls": [
                    {"index": i, "id": call["id"], "type": "function", "function": function}
                ]
            }
        )
    yield event({}, "tool_calls" if out.get("tool_calls") else "stop")
    counts = {"prompt_tokens": usage[0], "completion_tokens": usage[1]}
    yield event(None, usage={**counts, "total_tokens": sum(usage)})
    yield b"data: [DONE]\n\n"


def reply(handler: Any, status: int, content_type: str, data: bytes) -> None:
    """Answer an http.server request with one whole body."""
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


class FakeOpenAI:
    """A real HTTP server (a thread) speaking OpenAI chat completions: each request's answer
    is `answer(body)` (a dict with `content` and/or `tool_calls` `[{id, name, arguments}]`),
    so it can depend on the conversation sent, or `{"status": 500}` for an HTTP error. Counts
    requests. A request with
    `"stream": true` gets the answer as server-sent events (`openai_chat_sse`): the content
    word by word, its first word only once `gates[0]` is set and the others once `gates[1]`
    is (threading.Events; a test subscribes first, then sees the first word live). While
    `hold` is cleared, streamed answers wait for it (a test can open its live feed first)."""

    def __init__(
        self,
        answer: Callable[[dict[str, Any]], dict[str, Any]],
        usage: tuple[int, int],
        gates: Sequence[Any] = (),  # threading.Events
    ):
        import http.server
        import threading

        fake = self
        self.requests: list[dict[str, Any]] = []
        self.hold = threading.Event()
        self.hold.set()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append(body)
                out = answer(body)
                if "status" in out:  # an error answer: {"status": 500, "message": ...}
                    error = {"error": {"message": out.get("message", "failed"), "type": "server"}}
                    reply(self, out["status"], "application/json", json.dumps(error).encode())
                    return
                if body.get("stream"):
                    fake.hold.wait(30)
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.end_headers()
                    for chunk in openai_chat_sse(out, usage, gates):
                        self.wfile.write(chunk)
                        self.wfile.flush()
                    self.close_connection = True
                    return
                calls = [
                    {
                        "id": c["id"],
                        "type": "function",
                        "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])},
                    }
                    for c in out.get("tool_calls") or []
                ]
                message: dict[str, Any] = {"role": "assistant", "content": out.get("content")}
                if calls:
                    message["tool_calls"] = calls
                data = json.dumps(
                    {
                        "id": "chatcmpl-1",
                        "object": "chat.completion",
                        "created": 0,
                        "model": body.get("model", "gpt-4.1"),
                        "choices": [
                            {
                                "index": 0,
                                "message": message,
                                "finish_reason": "tool_calls" if calls else "stop",
                            }
                        ],
                        "usage": {
                            "prompt_tokens": usage[0],
                            "completion_tokens": usage[1],
                            "total_tokens": sum(usage),
                        },
                    }
                ).encode()
                reply(self, 200, "application/json", data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class OtlpReceiver:
    """An OTLP/HTTP trace receiver on a free loopback port: a real HTTP server in a thread
    that decodes `ExportTraceServiceRequest` protobufs (opentelemetry-proto) into dicts."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

        self.spans: list[dict[str, Any]] = []
        self.requests = 0
        lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                request = trace_service_pb2.ExportTraceServiceRequest()
                request.ParseFromString(body)
                with lock:
                    receiver.requests += 1
                    receiver.spans.extend(_decode_spans(request))
                answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def env(self, **extra: str) -> dict[str, str]:
        """OTEL_* variables that send a process's spans here quickly."""
        return {
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.url,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_BSP_SCHEDULE_DELAY": "50",
            "OTEL_SERVICE_NAME": "everruns-test",
            **extra,
        }

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _decode_spans(request: Any) -> list[dict[str, Any]]:
    out = []
    for resource in request.resource_spans:
        service = {a.key: _any_value(a.value) for a in resource.resource.attributes}
        for scope in resource.scope_spans:
            for span in scope.spans:
                out.append(
                    {
                        "name": span.name,
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent_id": span.parent_span_id.hex() or None,
                        "start": span.start_time_unix_nano / 1e9,
                        "end": span.end_time_unix_nano / 1e9,
                        "status": {0: "unset", 1: "ok", 2: "error"}[span.status.code],
                        "status_message": span.status.message,
                        "kind": span.kind,
                        "attributes": {a.key: _any_value(a.value) for a in span.attributes},
                        "links": [(x.trace_id.hex(), x.span_id.hex()) for x in span.links],
                        "service": service.get("service.name"),
                    }
                )
    return out


def _any_value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_any_value(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None
