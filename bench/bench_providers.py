"""Per-call overhead of the everruns provider layer versus a bare SDK call.

Both sides stream the same chat completion from the same local fake server
(`llmock`, started here as a subprocess on 127.0.0.1): the bare side iterates
`AsyncOpenAI().chat.completions.create(stream=True)`; the everruns side calls
`OpenAIChatProvider.complete` (message conversion, stream assembly, tool-call
parsing, usage, error translation). Prints median and p95 per call and the
difference. Run: `.venv/bin/python bench/bench_providers.py [calls]`.
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai

from everruns.providers.base import LLMRequest
from everruns.providers.openai_chat import OpenAIChatProvider
from everruns.spec import ModelSpec


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_llmock(port: int) -> subprocess.Popen[bytes]:
    exe = Path(sys.executable).parent / "llmock"
    proc = subprocess.Popen(
        [
            str(exe),
            "serve",
            "--port",
            str(port),
            "--tool-mode",
            "off",
            "--response-style",
            "static",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("llmock did not start")


def _stats(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1000, ordered[int(len(ordered) * 0.95) - 1] * 1000


async def _measure(base_url: str, calls: int) -> None:
    messages = [{"role": "user", "content": "Summarize durable execution in one line."}]
    bare = openai.AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0)
    model = ModelSpec(
        provider="openai-compatible", name="gpt-4.1", base_url=base_url, api_key_env=None
    )
    ours = OpenAIChatProvider(model)
    request = LLMRequest(model=model, system="", messages=messages, tools=[], step=0, attempt=1)

    async def bare_call() -> None:
        stream = await bare.chat.completions.create(
            model="gpt-4.1",
            messages=messages,
            stream=True,  # type: ignore[arg-type]
            stream_options={"include_usage": True},
        )
        async for _chunk in stream:
            pass

    async def our_call() -> None:
        await ours.complete(request, lambda _t: None)

    for _ in range(20):  # warm up both clients' connection pools
        await bare_call()
        await our_call()
    bare_t: list[float] = []
    our_t: list[float] = []
    for _ in range(calls):  # interleaved, so drift affects both equally
        t0 = time.perf_counter()
        await bare_call()
        bare_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        await our_call()
        our_t.append(time.perf_counter() - t0)
    b50, b95 = _stats(bare_t)
    o50, o95 = _stats(our_t)
    print(f"{'':26}{'median ms':>10}{'p95 ms':>10}")
    print(f"{'bare openai SDK stream':26}{b50:>10.2f}{b95:>10.2f}")
    print(f"{'everruns provider':26}{o50:>10.2f}{o95:>10.2f}")
    print(f"{'overhead':26}{o50 - b50:>10.2f}{o95 - b95:>10.2f}   ({calls} calls each)")


def main() -> None:
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    port = _free_port()
    proc = _start_llmock(port)
    try:
        asyncio.run(_measure(f"http://127.0.0.1:{port}/v1", calls))
    finally:
        proc.kill()
        proc.wait()


if __name__ == "__main__":
    main()
