"""Real providers end to end: the OpenAI and Anthropic SDKs against a fake LLM server.

The fake server is `llmock` (a separate process speaking the OpenAI chat and
Anthropic Messages wire formats, with scripted faults and a journal of every
request it served, with timings). The engine runs in real `everruns worker` /
`everruns run` processes; nothing in the SDKs is mocked. Assertions read the
run's journal, `everruns status --json`, and the server's request log.

Scenarios are targeted at a model name (`match: {model: ...}`), so runs that
use different model names can share the server at the same time.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from everruns.core.events import Event
from everruns.spec import load_spec, parse_spec
from everruns.store import Store
from helpers import cli, env_for, read_ledger, start_worker, stop, wait_until

pytestmark = pytest.mark.timeout(90)

CONTEXT_WINDOW = 4000  # tokens (llmock estimates 4 characters a token)
# A worker the test SIGKILLs holds a short lease, so another can take over soon. Every
# other worker holds a long one: on a loaded machine a 1 s lease can lapse between two
# renewals, and the run is then (correctly, but needlessly) taken over again.
KILLED_WORKER = ("--lease-ttl", "2", "--poll-interval", "0.1", "--shutdown-grace", "1")
WORKER = ("--lease-ttl", "10", "--poll-interval", "0.1", "--shutdown-grace", "1")
GPT_41 = (2.00, 8.00)  # US$ per million tokens, input / output (providers/pricing.py)
SONNET_45 = (3.00, 15.00)


# ---------------------------------------------------------------- the fake server


class LLMock:
    """A running `llmock serve` and its control API (/_llmock)."""

    def __init__(self, port: int):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.http = httpx.Client(base_url=self.url, timeout=30)

    @property
    def openai_base(self) -> str:
        return f"{self.url}/v1"

    @property
    def anthropic_base(self) -> str:
        return f"{self.url}/anthropic"

    def reset(self) -> None:
        self.http.post("/_llmock/reset").raise_for_status()

    def scenario(self, *behaviors: dict[str, Any]) -> None:
        resp = self.http.post("/_llmock/scenario", json={"behaviors": list(behaviors)})
        assert resp.status_code == 201, resp.text

    def requests(self, model: str | None = None, provider: str | None = None) -> list[dict]:
        """Served requests, oldest first. Times are the server's time.monotonic()."""
        records = self.http.get("/_llmock/requests").json()["requests"]
        return [
            r
            for r in records
            if (model is None or r["model"] == model)
            and (provider is None or r["provider"] == provider)
        ]

    def model(self, provider: str, name: str, **extra: Any) -> dict[str, Any]:
        """A model spec pointing at this server; `provider` is openai | anthropic |
        openai-compatible. The key is read from FAKE_KEY (any value)."""
        base = self.anthropic_base if provider == "anthropic" else self.openai_base
        return {
            "provider": provider,
            "name": name,
            "base_url": base,
            "api_key_env": "FAKE_KEY",
            **extra,
        }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def llmock_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LLMock]:
    """One `llmock serve` for the session; killed at the end."""
    log = tmp_path_factory.mktemp("llmock") / "llmock.log"
    binary = Path(sys.executable).parent / "llmock"
    for _ in range(3):  # the port could be taken between probing and binding
        port = _free_port()
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [
                    str(binary),
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--log-level",
                    "warning",
                    "--context-window",
                    str(CONTEXT_WINDOW),
                ],
                stdout=out,
                stderr=out,
            )
        mock = LLMock(port)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if mock.http.get("/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            proc.kill()
            proc.wait()
            continue
        try:
            yield mock
        finally:
            mock.http.close()
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return
    raise RuntimeError(f"llmock did not start; see {log}:\n{log.read_text()[-2000:]}")


@pytest.fixture
def llmock(llmock_server: LLMock) -> LLMock:
    llmock_server.reset()
    return llmock_server


# ---------------------------------------------------------------- helpers


def write_spec(path: Path, **spec: Any) -> Path:
    spec.setdefault("name", "provider-agent")
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def provider_env(db_url: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    return env_for(
        db_url, FAKE_KEY="x", EVERRUNS_TEST_LEDGER=str(tmp_path / "ledger.jsonl"), **extra
    )


def of(events: list[Event], *kinds: str) -> list[Event]:
    return [e for e in events if e.type in kinds]


def cost_of(usage: dict[str, Any], price: tuple[float, float]) -> float:
    return (usage["input_tokens"] * price[0] + usage["output_tokens"] * price[1]) / 1e6


async def wait_for_status(store: Store, run_id: str, *statuses: str, timeout: float) -> None:
    async def reached() -> bool:
        return (await store.get_run(run_id)).status in statuses

    await wait_until(reached, timeout=timeout, what=f"run {run_id} to be {'/'.join(statuses)}")


def read_until(
    proc: subprocess.Popen[bytes], needle: bytes, timeout: float, seen: bytes = b""
) -> bytes:
    """Read a child's stdout (non-blocking) until `needle` appears; returns all read so
    far (pass it back as `seen` to continue)."""
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    deadline = time.monotonic() + timeout
    while needle not in seen:
        if time.monotonic() > deadline or proc.poll() is not None:
            raise AssertionError(f"never saw {needle!r} on stdout; got {seen!r}")
        try:
            seen += os.read(proc.stdout.fileno(), 65536)
        except BlockingIOError:
            time.sleep(0.02)
    return seen


def start_run_process(env: dict[str, str], cwd: Path, *args: str) -> subprocess.Popen[bytes]:
    """`everruns run ...` as a child whose stdout (the streamed deltas) we read."""
    return subprocess.Popen(
        [sys.executable, "-m", "everruns.cli", "run", *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )


PROVIDERS = ["openai", "anthropic"]


# ================================================================ 1. a full run


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_full_run_streams_calls_a_tool_and_accounts_usage(
    provider: str, llmock: LLMock, sqlite_url: str, tmp_path: Path
) -> None:
    """`everruns run` against the real SDK: the model calls a tool (llmock's auto tool
    mode), gets its result, answers in text; deltas are printed as they stream, usage
    and cost land in the journal and in `status`."""
    name, price = ("gpt-4.1", GPT_41) if provider == "openai" else ("claude-sonnet-4-5", SONNET_45)
    spec = write_spec(
        tmp_path / "agent.yaml",
        model=llmock.model(provider, name),  # `openai` with a base_url: priced as OpenAI
        tools=["ledgertools:idem_record"],
    )
    env = provider_env(sqlite_url, tmp_path)
    result = cli("run", str(spec), "--input", "Please record a key.", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    async with await Store.open(sqlite_url) as store:
        (row,) = await store.list_runs()
        events = [e.to_dict() for e in await store.load_events(row.id)]
    status = json.loads(cli("status", row.id, "--json", env=env, cwd=tmp_path).stdout)
    types = [e["type"] for e in events]
    assert types == [
        "run.created",
        "run.started",
        "llm.started",
        "llm.completed",
        "tool.started",
        "tool.completed",
        "llm.started",
        "llm.completed",
        "run.completed",
    ]
    first, second = (e["data"] for e in events if e["type"] == "llm.completed")

    # The tool call came through the stream and was executed once.
    (call,) = first["message"]["tool_calls"]
    assert call["name"] == "idem_record" and call["arguments"]["key"]
    assert [(x["tool"], x["call_id"]) for x in read_ledger(tmp_path / "ledger.jsonl")] == [
        ("idem_record", call["id"])
    ]
    answer = second["message"]["content"]
    assert answer and status["result"] == answer and status["status"] == "completed"

    # The deltas were printed while streaming, before the llm.completed line.
    lines = result.stdout.splitlines()
    completed_at = next(
        i for i, line in enumerate(lines) if line.strip().startswith("8 llm.completed")
    )
    assert answer in lines[:completed_at], result.stdout

    # Usage and cost: per call in the journal, summed in the projection.
    for data in (first, second):
        assert data["usage"]["input_tokens"] > 0 and data["usage"]["output_tokens"] > 0
        assert data["usage"]["cost_usd"] == pytest.approx(cost_of(data["usage"], price))
        assert data["model"] == name and data["stop_reason"]
    usage = status["usage"]
    assert usage["input_tokens"] == first["usage"]["input_tokens"] + second["usage"]["input_tokens"]
    assert (
        usage["output_tokens"] == first["usage"]["output_tokens"] + second["usage"]["output_tokens"]
    )
    assert usage["total_tokens"] > 0
    assert usage["cost_usd"] > 0
    assert usage["cost_usd"] == pytest.approx(
        first["usage"]["cost_usd"] + second["usage"]["cost_usd"], abs=1e-6
    )

    # On the wire: two streamed requests; the second carries the tool result in the
    # provider's own format, tied to the call id the model gave.
    requests = llmock.requests(model=name)
    assert [(r["stream"], r["status"], r["completed"]) for r in requests] == [(True, 200, True)] * 2
    body = requests[1]["body"]
    if provider == "openai":
        assert body["stream_options"] == {"include_usage": True}
        assert body["messages"][0]["role"] == "system"
        assert body["messages"][-2]["tool_calls"][0]["id"] == call["id"]
        assert body["messages"][-1] == {
            "role": "tool",
            "tool_call_id": call["id"],
            "content": f"idem_record recorded {call['arguments']['key']}",
        }
    else:
        assert body["system"] and body["max_tokens"] > 0
        assert body["messages"][-2]["content"][-1]["type"] == "tool_use"
        assert body["messages"][-1]["role"] == "user"
        assert body["messages"][-1]["content"] == [
            {
                "type": "tool_result",
                "tool_use_id": call["id"],
                "content": f"idem_record recorded {call['arguments']['key']}",
                "is_error": False,
                # model.cache: auto marks the conversation so far for the prompt cache
                "cache_control": {"type": "ephemeral"},
            }
        ]
        assert body["system"][0]["cache_control"] == {"type": "ephemeral"}


# ================================================================ 2. error classes


@dataclass(frozen=True)
class Case:
    """One fault injected on one model name, and the documented reaction."""

    id: str
    behaviors: list[dict[str, Any]]
    classes: list[str]  # llm.failed classes, in order
    outcome: str  # "completed", or the run.failed reason
    requests: int  # requests that reach the server
    anthropic_classes: list[str] | None = None  # when Anthropic's body differs
    model: dict[str, Any] = field(default_factory=dict)
    retry: dict[str, Any] = field(default_factory=dict)
    input: str = "hello there"
    message: str | None = None  # expected in the run.failed error
    provider_message: str | None = None  # expected in the llm.failed error

    def expected_classes(self, provider: str) -> list[str]:
        if provider == "anthropic" and self.anthropic_classes is not None:
            return self.anthropic_classes
        return self.classes


CASES = [
    Case(
        "rate_limited",
        [{"type": "fail", "status": 429, "retry_after": 2}],
        ["rate_limited"],
        "completed",
        2,
    ),
    # llmock sends `Retry-After: 1` with a 503. Anthropic's 503 body says overloaded_error.
    Case(
        "server_error_503",
        [{"type": "fail", "status": 503, "times": 2}],
        ["server_error"] * 2,
        "completed",
        3,
        anthropic_classes=["overloaded"] * 2,
    ),
    # A 500 comes without Retry-After: pure exponential back-off.
    Case(
        "server_error_500",
        [{"type": "fail", "status": 500, "times": 3}],
        ["server_error"] * 3,
        "completed",
        4,
    ),
    Case("overloaded_529", [{"type": "fail", "status": 529}], ["overloaded"], "completed", 2),
    Case(
        "truncated",
        [{"type": "stream_fault", "kind": "truncate", "after_chunks": 2}],
        ["stream_broken"],
        "completed",
        2,
    ),
    Case(
        "disconnect",
        [{"type": "stream_fault", "kind": "disconnect", "after_chunks": 2}],
        ["stream_broken"],
        "completed",
        2,
    ),
    # Chunk 3: for Anthropic chunk 2 is a `ping`, which the SDK never parses.
    Case(
        "malformed",
        [{"type": "stream_fault", "kind": "malformed", "after_chunks": 3}],
        ["stream_broken"],
        "completed",
        2,
    ),
    Case(
        "stall",
        [{"type": "stream_fault", "kind": "stall", "after_chunks": 2, "stall_seconds": 6}],
        ["stream_broken"],
        "completed",
        2,
        model={"timeouts": {"stream_idle": 1}},
    ),
    # No byte for longer than timeouts.read before the response starts.
    Case(
        "read_timeout",
        [{"type": "delay", "seconds": 3}],
        ["timeout"],
        "completed",
        2,
        model={"timeouts": {"read": 1}},
    ),
    Case(
        "bad_request_400",
        [
            {
                "type": "fail",
                "status": 400,
                "message": "Invalid value for 'temperature': must be <= 2.",
            }
        ],
        ["bad_request"],
        "llm_error",
        1,
        message="Invalid value for 'temperature': must be <= 2.",
    ),
    Case(
        "auth_401",
        [{"type": "fail", "status": 401, "message": "Incorrect API key provided: x."}],
        ["auth"],
        "llm_error",
        1,
        message="Incorrect API key provided: x.",
    ),
    # A real over-window prompt: llmock refuses prompts above --context-window.
    Case(
        "context_too_long",
        [],
        ["context_too_long"],
        "context_too_long",
        1,
        input="word " * (CONTEXT_WINDOW * 2),
        provider_message=f"{CONTEXT_WINDOW} ",  # llmock's "... maximum context ... 4000 tokens"
    ),
    Case(
        "content_refused",
        [{"type": "reply", "text": "I can't help with that.", "finish_reason": "content_filter"}],
        ["content_refused"],
        "llm_error",
        1,
    ),
    Case(
        "retries_exhausted",
        [{"type": "fail", "status": 500, "times": None}],
        ["server_error"] * 3,
        "llm_error",
        3,
        retry={"max_attempts": 3},
        message="failed 3 times in a row",
    ),
]


@dataclass
class Outcome:
    events: list[Event]
    row: Any
    requests: list[dict[str, Any]]


def _matrix_model(case: Case) -> str:
    return f"m-{case.id}"


@pytest.fixture(scope="module")
def error_matrix(
    llmock_server: LLMock, tmp_path_factory: pytest.TempPathFactory
) -> dict[tuple[str, str], Outcome]:
    """Every case on both providers, at once: one run per (case, provider), each on its
    own model name with its faults targeted at that name, all executed by one worker."""
    mock = llmock_server
    mock.reset()
    tmp = tmp_path_factory.mktemp("matrix")
    db_url = f"sqlite:///{tmp / 'everruns.db'}"
    specs: dict[tuple[str, str], Any] = {}
    for case in CASES:
        for provider in PROVIDERS:
            name = _matrix_model(case)
            for behavior in case.behaviors:
                mock.scenario({**behavior, "match": {"model": name, "provider": provider}})
            model = mock.model(provider, name, **{"timeouts": {"stream_idle": 5}, **case.model})
            specs[(case.id, provider)] = parse_spec(
                {
                    "name": f"{case.id}-{provider}",
                    "model": model,
                    "retry": {
                        "initial_backoff": 0.4,
                        "max_backoff": 2,
                        "breaker_threshold": 100,  # breakers are tested separately
                        **case.retry,
                    },
                }
            )

    async def go() -> dict[tuple[str, str], Outcome]:
        store = await Store.open(db_url)
        worker = None
        try:
            run_ids = {
                key: await store.create_run(spec, next(c.input for c in CASES if c.id == key[0]))
                for key, spec in specs.items()
            }
            worker = start_worker(
                provider_env(db_url, tmp),
                *WORKER,
                "--concurrency",
                "64",
                cwd=tmp,
                log=tmp / "w.log",
            )

            async def all_done() -> bool:
                rows = [await store.get_run(r) for r in run_ids.values()]
                return all(r.status in ("completed", "failed") for r in rows)

            await wait_until(all_done, timeout=45, what="every error-matrix run to end")
            served = mock.requests()
            return {
                key: Outcome(
                    events=await store.load_events(run_id),
                    row=await store.get_run(run_id),
                    requests=[
                        r for r in served if r["model"] == f"m-{key[0]}" and r["provider"] == key[1]
                    ],
                )
                for key, run_id in run_ids.items()
            }
        finally:
            if worker is not None:
                stop(worker)
            await store.close()

    return asyncio.run(go())


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_error_class(
    case: Case, provider: str, error_matrix: dict[tuple[str, str], Outcome]
) -> None:
    out = error_matrix[(case.id, provider)]
    failed = of(out.events, "llm.failed")
    started = of(out.events, "llm.started")
    summary = [(e.type, e.data.get("class"), e.data.get("error")) for e in out.events]
    assert [e.data["class"] for e in failed] == case.expected_classes(provider), summary
    # One journaled attempt per request the server saw: nothing retried behind our back
    # (the SDKs' own retries are off), nothing lost.
    assert len(started) == len(out.requests) == case.requests, (summary, out.requests)
    assert [s.data["attempt"] for s in started] == list(range(1, case.requests + 1))
    terminal = out.events[-1]
    if case.outcome == "completed":
        assert terminal.type == "run.completed", summary
        assert out.row.status == "completed"
        assert all(f.data["retryable"] and f.data["retry_at"] for f in failed)
        assert out.requests[-1]["completed"] and out.requests[-1]["status"] == 200
    else:
        assert terminal.type == "run.failed", summary
        assert terminal.data["reason"] == case.outcome
        assert out.row.error["reason"] == case.outcome
        if case.message:
            assert case.message in terminal.data["error"]
        if case.provider_message:
            assert all(case.provider_message in f.data["error"] for f in failed)
        if case.requests == 1:  # fail fast: not retryable, no retry time
            assert [(f.data["retryable"], f.data["retry_at"]) for f in failed] == [(False, None)]
    # Every failure says which model failed, and each class is a documented one.
    assert all(f.data["model"] == f"{provider}:m-{case.id}" for f in failed)


def _gaps(requests: list[dict[str, Any]]) -> list[float]:
    """Seconds from the end of each response to the start of the next request."""
    return [b["started_at"] - a["ended_at"] for a, b in itertools.pairwise(requests)]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_retry_after_is_honoured(
    provider: str, error_matrix: dict[tuple[str, str], Outcome]
) -> None:
    """429 with Retry-After: 2 — the next request reaches the server no earlier than 2 s
    after the 429 left it; a 503's Retry-After: 1 is honoured the same way."""
    out = error_matrix[("rate_limited", provider)]
    assert out.requests[0]["status"] == 429 and out.requests[0]["retry_after"] == 2.0
    (failed,) = of(out.events, "llm.failed")
    assert failed.data["retry_after"] == 2.0
    (gap,) = _gaps(out.requests)
    assert gap >= 2.0, gap
    assert gap < 4.0  # and not much later either (back-off ceiling 0.4 s < 2 s)
    out = error_matrix[("server_error_503", provider)]
    assert [r["retry_after"] for r in out.requests[:2]] == [1.0, 1.0]
    assert all(gap >= 1.0 for gap in _gaps(out.requests)), _gaps(out.requests)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_server_errors_back_off_exponentially(
    provider: str, error_matrix: dict[tuple[str, str], Outcome]
) -> None:
    """500 without Retry-After: the k-th retry waits in [c/2, c], c = 0.4 s * 2^(k-1)
    (full jitter on the upper half), journaled as retry_at and observed at the server."""
    out = error_matrix[("server_error_500", provider)]
    ceilings = [0.4, 0.8, 1.6]
    offset = time.time() - time.monotonic()  # the server's clock is our time.monotonic()
    failures = of(out.events, "llm.failed")
    for failed, response, ceiling in zip(failures, out.requests[:-1], ceilings, strict=True):
        # retry_at is computed after the 500 arrived: at least c/2 after its last byte,
        # at most c after it plus the time to record the failure.
        planned = failed.data["retry_at"] - (response["ended_at"] + offset)
        assert ceiling / 2 - 0.01 <= planned <= ceiling + 1.0, (planned, ceiling)
    for gap, ceiling in zip(_gaps(out.requests), ceilings, strict=True):
        assert gap >= ceiling / 2, (gap, ceiling)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_stream_faults_are_seen_by_the_server(
    provider: str, error_matrix: dict[tuple[str, str], Outcome]
) -> None:
    """The faults really happened mid-stream, and a stall was abandoned after
    stream_idle (1 s), not sat through (6 s)."""
    for case_id, kind, chunks in (
        ("truncated", "truncate", 2),
        ("disconnect", "disconnect", 2),
        ("malformed", "malformed", 3),
        ("stall", "stall", 2),
    ):
        first = error_matrix[(case_id, provider)].requests[0]
        assert first["fault"] == f"stream:{kind}@{chunks}", first
        if (
            kind != "malformed"
        ):  # after a corrupt chunk, the OpenAI SDK reads on; Anthropic's hangs up
            assert not first["completed"], first
    stalled = error_matrix[("stall", provider)].requests[0]
    assert 0.9 <= stalled["stall_waited"] < 3, stalled
    (failed,) = of(error_matrix[("stall", provider)].events, "llm.failed")
    assert "stalled" in failed.data["error"]


# ================================================================ 3. durable waits


@pytest.mark.parametrize(
    ("provider", "db"),
    [("openai", "sqlite"), ("anthropic", "postgres")],
    ids=["openai-sqlite", "anthropic-postgres"],
)
async def test_long_retry_after_parks_the_run_without_a_worker(
    provider: str, db: str, llmock: LLMock, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A 429 asking for 6 s, with retry.durable_wait_after = 2 s: the run is parked in the
    database (run.waiting, lease released), its worker is killed, and a worker started
    after wake_at finishes it. The retry reaches the server >= 6 s after the 429."""
    db_url = request.getfixturevalue("sqlite_url" if db == "sqlite" else "pg_url")
    name = f"park-{provider}"
    llmock.scenario({"type": "fail", "status": 429, "retry_after": 6, "match": {"model": name}})
    spec = write_spec(
        tmp_path / "agent.yaml",
        model=llmock.model(provider, name),
        retry={"durable_wait_after": 2},
    )
    env = provider_env(db_url, tmp_path)
    store = await Store.open(db_url)
    first = second = None
    try:
        run_id = await store.create_run(load_spec(spec), "hello")
        first = start_worker(env, *WORKER, cwd=tmp_path, log=tmp_path / "w1.log")
        await wait_for_status(store, run_id, "waiting", timeout=20)
        events = await store.load_events(run_id)
        (failed,) = of(events, "llm.failed")
        (waiting,) = of(events, "run.waiting")
        assert failed.data["class"] == "rate_limited" and failed.data["retry_after"] == 6.0
        assert waiting.data["reason"] == "llm_backoff"
        assert waiting.data["wake_at"] == failed.data["retry_at"]
        assert waiting.data["wake_at"] - failed.ts >= 6.0 - 0.01
        status = json.loads(cli("status", run_id, "--json", env=env, cwd=tmp_path).stdout)
        assert status["status"] == "waiting"
        assert status["lease_owner"] is None
        assert status["wake_at"] == waiting.data["wake_at"]

        stop(first, signal.SIGKILL)  # nobody is waiting in memory for this run
        await asyncio.sleep(max(0.0, waiting.data["wake_at"] - time.time()) + 0.2)
        assert (await store.get_run(run_id)).status == "waiting"
        assert len(llmock.requests(model=name)) == 1
        second = start_worker(env, *WORKER, cwd=tmp_path, log=tmp_path / "w2.log")
        await wait_for_status(store, run_id, "completed", "failed", timeout=20)
        events = await store.load_events(run_id)
        assert events[-1].type == "run.completed"
        after = [e.type for e in events[events.index(of(events, "run.waiting")[0]) + 1 :]]
        assert after == ["run.started", "llm.started", "llm.completed", "run.completed"], [
            (e.seq, e.type, round(e.ts, 3), e.data) for e in events
        ]
        workers = [e.data["worker"] for e in of(events, "run.started")]
        assert len(set(workers)) == 2
        served = llmock.requests(model=name)
        assert [r["status"] for r in served] == [429, 200]
        assert served[1]["started_at"] - served[0]["ended_at"] >= 6.0
    finally:
        for proc in (first, second):
            if proc is not None:
                stop(proc)
        await store.close()


# ================================================================ 4. breaker + fallback


async def test_breaker_opens_falls_back_and_is_shared_by_the_fleet(
    llmock: LLMock, db_url: str, tmp_path: Path
) -> None:
    """The primary (OpenAI gpt-4.1) answers step 1, then fails with 503 for good. After
    breaker_threshold = 2 failures its breaker opens: `llm.fallback` and step 2 is
    answered by the fallback (Anthropic), from a transcript begun on OpenAI. A second
    run, on another worker process, skips the primary at once: the breaker is a row in
    the database, not a worker's memory."""
    primary = llmock.model("openai", "gpt-4.1")
    fallback = llmock.model("anthropic", "claude-sonnet-4-5")
    spec = write_spec(
        tmp_path / "agent.yaml",
        model={**primary, "fallbacks": [fallback]},
        tools=["ledgertools:idem_record"],
        retry={"breaker_threshold": 2, "breaker_cooldown": 120, "initial_backoff": 0.2},
    )
    # Step 1 on the primary: a tool call that takes 1 s, time to break the primary.
    llmock.scenario(
        {
            "type": "reply",
            "tool_calls": [{"name": "idem_record", "arguments": {"key": "alpha", "sleep": 1.0}}],
            "match": {"model": "gpt-4.1"},
        }
    )
    env = provider_env(db_url, tmp_path)
    store = await Store.open(db_url)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        run1 = await store.create_run(load_spec(spec), "record alpha")
        # Two workers; the one that runs run 1 is stopped before run 2 is created.
        procs = [
            start_worker(env, *WORKER, cwd=tmp_path, log=tmp_path / f"w{i}.log") for i in (1, 2)
        ]

        async def tool_started() -> bool:
            return bool(of(await store.load_events(run1), "tool.started"))

        await wait_until(tool_started, timeout=20, what="the tool call")
        llmock.scenario(
            {
                "type": "fail",
                "status": 503,
                "retry_after": 0.1,
                "times": None,
                "match": {"model": "gpt-4.1"},
            }
        )
        await wait_for_status(store, run1, "completed", "failed", timeout=20)
        events = await store.load_events(run1)
        llm = [
            (e.type, e.data.get("model") or e.data.get("to"), e.data.get("class"))
            for e in of(events, "llm.started", "llm.completed", "llm.failed", "llm.fallback")
        ]
        assert llm == [
            ("llm.started", "openai:gpt-4.1", None),
            ("llm.completed", "gpt-4.1", None),
            ("llm.started", "openai:gpt-4.1", None),
            ("llm.failed", "openai:gpt-4.1", "server_error"),
            ("llm.started", "openai:gpt-4.1", None),
            ("llm.failed", "openai:gpt-4.1", "server_error"),
            ("llm.fallback", "anthropic:claude-sonnet-4-5", None),
            ("llm.started", "anthropic:claude-sonnet-4-5", None),
            ("llm.completed", "claude-sonnet-4-5", None),
        ], llm
        assert events[-1].type == "run.completed"
        opened = of(events, "llm.failed")[1]
        assert "breaker_open_until" not in of(events, "llm.failed")[0].data
        assert opened.data["breaker_open_until"] == pytest.approx(opened.ts + 120, abs=2)
        assert opened.data["retry_at"] - opened.ts < 0.5  # no back-off: a fallback is ready
        (fb,) = of(events, "llm.fallback")
        assert fb.data == {
            "from": "openai:gpt-4.1",
            "to": "anthropic:claude-sonnet-4-5",
            "reason": "breaker_open",
            "skipped": ["openai:gpt-4.1"],
        }
        # The fallback got the OpenAI-born transcript in Anthropic's format.
        call_id = of(events, "llm.completed")[0].data["message"]["tool_calls"][0]["id"]
        (anthropic_request,) = llmock.requests(provider="anthropic")
        messages = anthropic_request["body"]["messages"]
        assert [m["role"] for m in messages] == ["user", "assistant", "user"]
        assert messages[1]["content"][-1] == {
            "type": "tool_use",
            "id": call_id,
            "name": "idem_record",
            "input": {"key": "alpha", "sleep": 1.0},
        }
        assert messages[2]["content"][0]["tool_use_id"] == call_id
        # The breaker is open in the database for everyone.
        key = f"breaker:openai:gpt-4.1@{llmock.openai_base}"
        assert key in await store.breakers_open([key])

        w1 = of(events, "run.started")[0].data["worker"]
        (first,) = [p for p in procs if f"-{p.pid}-" in w1]
        stop(first)
        primary_requests = len(llmock.requests(model="gpt-4.1"))
        assert primary_requests == 3
        run2 = await store.create_run(load_spec(spec), "record beta")
        await wait_for_status(store, run2, "completed", "failed", timeout=20)
        events2 = await store.load_events(run2)
        assert events2[-1].type == "run.completed"
        first_llm = of(events2, "llm.started", "llm.fallback", "llm.failed")[0]
        assert first_llm.type == "llm.fallback" and first_llm.data["reason"] == "breaker_open"
        assert not of(events2, "llm.failed")
        assert {e.data["model"] for e in of(events2, "llm.started")} == {
            "anthropic:claude-sonnet-4-5"
        }
        assert len(llmock.requests(model="gpt-4.1")) == primary_requests  # never tried
        w2 = of(events2, "run.started")[0].data["worker"]
        assert w1 != w2 and f"-{first.pid}-" not in w2
    finally:
        for proc in procs:
            stop(proc)
        await store.close()


# ================================================================ 5. fleet rate limit

RPM = 60
RUNS = 66


def _worst_excess(times: list[float]) -> float:
    """Max over all windows [t_i, t_k] of (requests in it) - (what the bucket allows:
    RPM at once plus RPM/60 per second)."""
    times = sorted(times)
    return max(
        (k - i + 1) - (RPM + (times[k] - times[i]) * RPM / 60)
        for i in range(len(times))
        for k in range(i, len(times))
    )


async def test_fleet_wide_rpm_is_respected_by_three_workers(
    llmock: LLMock, db_url: str, tmp_path: Path
) -> None:
    """rate_limits: [{match: openai-compatible, rpm: 60}] shared by 3 worker processes
    through the database. The bucket holds 60 requests and refills 1/s, so in any window
    of w seconds at most 60 + w requests may start. 66 runs of one call each: 60 at once,
    6 throttled.

    The bucket grants on the workers' clock; what we can observe is (a) the llm.started
    event journaled right after the grant (one DB transaction later) and (b) the arrival
    at the server (that, plus an HTTP request). Both lag the grant by a variable delay, so
    observed windows can hold a little more than granted ones: (a) is allowed 1 extra
    request (1 s of refill for one append), (b) 2 (one append plus one local HTTP request;
    measured below, and printed on failure, is how much the llm.started-to-arrival delay
    varies). The failures this guards against are far larger: buckets per worker would
    let 3 x 60 through at once; a bucket that refills too fast would let the throttled
    requests through within the first second.
    """
    settings = tmp_path / "settings.yaml"
    settings.write_text(
        yaml.safe_dump({"rate_limits": [{"match": "openai-compatible", "rpm": RPM}]})
    )
    name = "rpm-model"
    spec = parse_spec({"name": "rpm-agent", "model": llmock.model("openai-compatible", name)})
    env = provider_env(db_url, tmp_path, EVERRUNS_SETTINGS=str(settings))
    store = await Store.open(db_url)
    workers: list[subprocess.Popen[bytes]] = []
    try:
        run_ids = [await store.create_run(spec, f"question {i}") for i in range(RUNS)]
        workers = [
            start_worker(
                env, *WORKER, "--concurrency", "32", cwd=tmp_path, log=tmp_path / f"w{i}.log"
            )
            for i in range(3)
        ]

        async def all_done() -> bool:
            return all(
                row.status == "completed" for row in [await store.get_run(r) for r in run_ids]
            )

        await wait_until(all_done, timeout=90, interval=0.5, what="all runs to complete")
        journals = {i: await store.load_events(r) for i, r in enumerate(run_ids)}
        served = llmock.requests(model=name)
        assert len(served) == RUNS and all(r["status"] == 200 for r in served)
        assert all(len(of(events, "llm.started")) == 1 for events in journals.values())

        # (a) the journal, on the bucket's clock
        journaled = {i: of(events, "llm.started")[0].ts for i, events in journals.items()}
        # (b) the server (its time.monotonic(), the same clock as ours on one host)
        offset = time.time() - time.monotonic()
        arrived = {
            int(r["body"]["messages"][-1]["content"].split()[-1]): r["started_at"] + offset
            for r in served
        }
        delays = [arrived[i] - journaled[i] for i in range(RUNS)]
        spread = max(delays) - min(delays)
        journal_excess = _worst_excess(list(journaled.values()))
        arrival_excess = _worst_excess(list(arrived.values()))
        detail = (
            f"journal excess {journal_excess:.2f}, server excess {arrival_excess:.2f}, "
            f"llm.started-to-arrival delay {min(delays):.3f}..{max(delays):.3f} s"
        )
        assert journal_excess <= 1.0, detail
        assert arrival_excess <= 2.0, detail
        # The limit was binding: the 6 grants past the burst needed 1 s each (on the
        # bucket's clock; implied by the journal check, spelled out).
        starts = sorted(journaled.values())
        assert starts[-1] - starts[0] >= (RUNS - RPM) * 60 / RPM - 1.0, detail
        by_worker = {of(events, "run.started")[0].data["worker"] for events in journals.values()}
        assert len(by_worker) >= 2  # the bucket was shared, not one worker doing it all
        print(f"\nrate limit ({db_url.split(':')[0]}): {detail}, spread {spread:.3f} s")
    finally:
        for w in workers:
            stop(w)
        await store.close()


# ================================================================ 6. budgets


def _budget_spec(path: Path, llmock: LLMock, provider: str, limit: float, sleep: float) -> Path:
    name = "gpt-4.1" if provider == "openai" else "claude-sonnet-4-5"
    # The model calls the tool forever: only the budget can end the run.
    llmock.scenario(
        {
            "type": "reply",
            "tool_calls": [{"name": "idem_record", "arguments": {"key": "k", "sleep": sleep}}],
            "times": None,
            "match": {"model": name},
        }
    )
    return write_spec(
        path,
        model=llmock.model(provider, name),
        tools=["ledgertools:idem_record"],
        limits={"max_cost_usd": limit, "max_steps": 40},
    )


def _check_budget(events: list[Event], status: dict[str, Any], limit: float, served: int) -> None:
    costs = [e.data["usage"]["cost_usd"] for e in of(events, "llm.completed")]
    assert len(costs) >= 2
    assert events[-1].type == "run.failed", [e.type for e in events]
    assert events[-1].data["reason"] == "budget_exceeded"
    assert f"max_cost_usd={limit:g}" in events[-1].data["error"]
    # It stopped at the first call that reached the limit, and made no call after it.
    assert sum(costs[:-1]) < limit <= sum(costs)
    assert served == len(costs)
    assert status["status"] == "failed" and status["error"]["reason"] == "budget_exceeded"
    assert status["usage"]["cost_usd"] == pytest.approx(sum(costs), abs=1e-6)
    assert status["usage"]["cost_usd"] <= limit + max(costs)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_budget_stops_the_run(
    provider: str, llmock: LLMock, sqlite_url: str, tmp_path: Path
) -> None:
    limit = 0.0002
    spec = _budget_spec(tmp_path / "agent.yaml", llmock, provider, limit, sleep=0)
    env = provider_env(sqlite_url, tmp_path)
    result = cli("run", str(spec), "--input", "go", "--json", env=env, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    events = [Event(r["seq"], r["type"], r["ts"], r["data"]) for r in records]
    status = json.loads(cli("status", records[0]["run_id"], "--json", env=env, cwd=tmp_path).stdout)
    name = "gpt-4.1" if provider == "openai" else "claude-sonnet-4-5"
    _check_budget(events, status, limit, len(llmock.requests(model=name)))


async def test_budget_holds_across_a_sigkilled_worker(
    llmock: LLMock, sqlite_url: str, tmp_path: Path
) -> None:
    """The spend so far is in the journal, not in a worker: a worker SIGKILLed mid-run
    (during a tool) takes nothing with it; the next one stops the run at the same limit."""
    limit = 0.0003
    spec = _budget_spec(tmp_path / "agent.yaml", llmock, "openai", limit, sleep=0.6)
    env = provider_env(sqlite_url, tmp_path)
    store = await Store.open(sqlite_url)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        run_id = await store.create_run(load_spec(spec), "go")
        procs.append(start_worker(env, *KILLED_WORKER, cwd=tmp_path, log=tmp_path / "w1.log"))

        async def started(kind: str, count: int) -> bool:
            return len(of(await store.load_events(run_id), kind)) >= count

        await wait_until(lambda: started("run.started", 1), timeout=20, what="the first claim")
        # The survivor starts now (starting a process is slow) but cannot take the run
        # while the first worker's lease is live.
        procs.append(start_worker(env, *WORKER, cwd=tmp_path, log=tmp_path / "w2.log"))
        await wait_until(lambda: started("tool.started", 2), timeout=20, what="the 2nd tool")
        stop(procs[0], signal.SIGKILL)
        spent_at_kill = (await store.get_run(run_id)).cost_usd
        assert 0 < spent_at_kill < limit
        await wait_for_status(store, run_id, "failed", "completed", timeout=30)
        events = await store.load_events(run_id)
        starts = of(events, "run.started")
        assert len(starts) == 2 and starts[1].data["takeover"]
        status = json.loads(cli("status", run_id, "--json", env=env, cwd=tmp_path).stdout)
        _check_budget(events, status, limit, len(llmock.requests(model="gpt-4.1")))
        # The killed worker's calls count toward the limit: the run did not start over.
        before_kill = [e for e in of(events, "llm.completed") if e.seq < starts[1].seq]
        assert len(before_kill) == 2
    finally:
        for proc in procs:
            stop(proc)
        await store.close()


# ================================================================ 7. SIGKILL mid-stream

ANSWER = "The answer is forty-two, computed carefully and checked twice."


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_sigkill_mid_stream_repeats_the_call_once(
    provider: str, llmock: LLMock, sqlite_url: str, tmp_path: Path
) -> None:
    """`everruns run` is SIGKILLed while the answer is streaming (its first words already
    printed, the server stalled before the rest). A worker takes the run over and makes
    the call again; the journal has that step's answer exactly once."""
    name = f"kill-{provider}"
    # OpenAI: role chunk, "The ", "answer " | stall. Anthropic: message_start,
    # content_block_start, ping, "The ", "answer " | stall.
    after = 3 if provider == "openai" else 5
    llmock.scenario(
        {"type": "reply", "text": ANSWER, "times": 2, "match": {"model": name}},
        {
            "type": "stream_fault",
            "kind": "stall",
            "after_chunks": after,
            "stall_seconds": 20,
            "match": {"model": name},
        },
    )
    spec = write_spec(tmp_path / "agent.yaml", model=llmock.model(provider, name))
    env = provider_env(sqlite_url, tmp_path)
    runner = start_run_process(
        env, tmp_path, str(spec), "--input", "what is it?", "--lease-ttl", "2"
    )
    store = await Store.open(sqlite_url)
    worker = None
    try:
        printed = read_until(runner, b"run.started", timeout=30)
        # Started now (a process takes seconds to start), it cannot take the run while
        # `everruns run` holds the lease.
        worker = start_worker(env, *WORKER, cwd=tmp_path, log=tmp_path / "w.log")
        printed = read_until(runner, b"The answer ", timeout=20, seen=printed)
        stop(runner, signal.SIGKILL)
        assert ANSWER.encode() not in printed
        (row,) = await store.list_runs()
        assert row.status == "running" and not of(await store.load_events(row.id), "llm.completed")
        await wait_for_status(store, row.id, "completed", "failed", timeout=20)
        events = await store.load_events(row.id)
        assert [e.type for e in events] == [
            "run.created",
            "run.started",
            "llm.started",  # killed here, mid-stream
            "llm.charged",  # the lost attempt, charged by the worker that took over
            "run.started",
            "llm.started",
            "llm.completed",
            "run.completed",
        ]
        lost = events[3].data
        assert lost["reason"] == "lost" and lost["attempt"] == 1
        assert lost["usage"]["estimated"] is True and lost["usage"]["input_tokens"] > 0
        assert events[4].data["takeover"] and events[4].data["epoch"] == 2
        assert [e.data["attempt"] for e in of(events, "llm.started")] == [1, 2]
        (completed,) = of(events, "llm.completed")
        assert completed.data["message"]["content"] == ANSWER
        assert events[-1].data["result"] == ANSWER
        # The server saw the same call twice: the first cut off mid-stream, the second whole.
        served = llmock.requests(model=name)
        assert len(served) == 2
        assert served[0]["fingerprint"] == served[1]["fingerprint"]
        assert not served[0]["completed"] and served[0]["chunks_sent"] == after
        assert served[1]["completed"] and served[1]["status"] == 200
    finally:
        if runner.poll() is None:
            runner.kill()
        if worker is not None:
            stop(worker)
        await store.close()
