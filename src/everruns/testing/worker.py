"""The worker process the plugin starts: `python -m everruns.testing.worker URL RUN_ID`.

An ordinary `Worker` restricted to one run, with two hooks installed first:
every tool of the agent is wrapped so each execution is counted in the ledger
(see effects.py), and every provider is wrapped so the `mid:llm` boundary (the
model answered, the answer not yet journaled) can be hit. It exits 0 once the
run is terminal, or dies by SIGKILL at the boundary named in EVERRUNS_CRASH_AT.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sys
from typing import Any

from everruns import journal as j
from everruns.engine import framework, llm_step, runner
from everruns.providers.base import DeltaCallback, LLMRequest, LLMResponse, Provider
from everruns.spec import AgentSpec, ModelSpec
from everruns.testing import effects
from everruns.tools.base import Tool, ToolContext


def counted(tool: Tool) -> Tool:
    """The tool, with each execution appended to the ledger before and after it runs."""
    original = tool.invoke

    async def invoke(arguments: dict[str, Any], ctx: ToolContext) -> Any:
        call = effects.CurrentCall(
            tool.name, ctx.tool_call_id, ctx.attempt, ctx.idempotency_key, tool.effect
        )
        effects.append({"kind": "exec", **dataclasses.asdict(call)})
        token = effects.current_call.set(call)
        try:
            return await original(arguments, ctx)
        finally:
            effects.current_call.reset(token)
            effects.append({"kind": "returned", **dataclasses.asdict(call)})
            effects.kill_point(effects.MID_TOOL)

    return dataclasses.replace(tool, invoke=invoke)


class _MidCall:
    def __init__(self, inner: Provider):
        self.inner = inner

    async def complete(self, request: LLMRequest, on_delta: DeltaCallback) -> LLMResponse:
        response = await self.inner.complete(request, on_delta)
        if request.purpose == "reason":
            effects.kill_point(effects.MID_LLM)
        return response


def install_hooks() -> None:
    # Patched where the engine looks them up: the run's tools are built by the runner,
    # the model is called by the LLM step.
    build_tools = runner.build_tools
    get_provider = llm_step.get_provider

    def counted_tools(spec: AgentSpec, **kwargs: Any) -> dict[str, Tool]:
        return {name: counted(t) for name, t in build_tools(spec, **kwargs).items()}

    def mid_call_provider(model: ModelSpec, api_key: str | None = None) -> Provider:
        return _MidCall(get_provider(model, api_key))

    runner.build_tools = counted_tools
    llm_step.get_provider = mid_call_provider
    framework.prepare_tool = counted  # a framework agent's tools (engine/framework.py)


async def serve(url: str, run_id: str, lease_ttl: float, poll: float) -> None:
    from everruns.engine.worker import Worker
    from everruns.store import Store

    store = await Store.open(url, migrate=False)
    worker = Worker(store, concurrency=1, lease_ttl=lease_ttl, poll_interval=poll, only=[run_id])
    task = asyncio.create_task(worker.run())
    try:
        while not task.done():
            row = await store.get_run(run_id)
            if row.status in j.TERMINAL_STATUSES:
                break
            await asyncio.wait({task}, timeout=poll)
    finally:
        worker.stop()
        await task
        await store.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m everruns.testing.worker")
    parser.add_argument("url")
    parser.add_argument("run_id")
    parser.add_argument("--lease-ttl", type=float, default=1.0)
    parser.add_argument("--poll-interval", type=float, default=0.1)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from everruns.engine.hardening import harden

    harden()  # like `everruns worker`: the user's tools see a production worker's environment
    install_hooks()
    asyncio.run(serve(args.url, args.run_id, args.lease_ttl, args.poll_interval))


if __name__ == "__main__":
    main()
