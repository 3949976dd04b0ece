"""The async SDK client against a real `everruns server` process, on both databases:
the methods it gained when both clients became shells over one core."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from everruns import AsyncClient
from everruns.client import ApiError, Run
from helpers import Server, env_for, free_port, read_ledger, write_agent

pytestmark = pytest.mark.timeout(120)


def _call(*keys: str, sleep: float = 0.0) -> dict[str, Any]:
    calls = [
        {"name": "idem_record", "arguments": {"key": k, **({"sleep": sleep} if sleep else {})}}
        for k in keys
    ]
    return {"tool_calls": calls, "delay": 0.1}


@pytest.fixture
def server(db_url: str, tmp_path: Path) -> Iterator[Server]:
    env = env_for(db_url, EVERRUNS_TEST_LEDGER=str(tmp_path / "ledger"))
    s = Server(env, "--lease-ttl", "2", log=tmp_path / "server.log")
    try:
        yield s
    finally:
        s.stop()


async def _until_status(client: AsyncClient, run_id: str, status: str) -> Run:
    for _ in range(300):
        run = await client.runs.get(run_id)
        if run.status == status:
            return run
        await asyncio.sleep(0.1)
    raise AssertionError(f"run {run_id} never became {status} (is {run.status})")


async def test_pause_resume_list_and_agents(server: Server, tmp_path: Path) -> None:
    spec = write_agent(
        tmp_path / "a.yaml",
        [_call("a", sleep=1.0), _call("b"), {"text": "finished"}],
        ["ledgertools:idem_record"],
    )
    async with AsyncClient(server.url) as client:
        assert await client.health() == {"status": "ok"}
        agent = await client.agents.create_from_file(spec)
        assert [(a.name, a.version) for a in await client.agents.list()] == [("test-agent", 1)]
        assert (await client.agents.get("test-agent", 1)).spec is not None
        with pytest.raises(ApiError) as info:
            await client.agents.get("nobody")
        assert info.value.status == 404

        run = await client.runs.start(agent.name, input="go")
        async for event in client.runs.stream(run.id, include_ephemeral=False):
            if event.type == "tool.started":
                break
        assert await client.runs.pause(run.id) == "requested"
        paused = await _until_status(client, run.id, "paused")
        assert paused.lease_owner is None
        journal = await client.runs.events(run.id)
        assert journal[-1].type == "run.paused"
        assert [e["key"] for e in read_ledger(tmp_path / "ledger")] == ["a"]
        assert await client.runs.pause(run.id) == "paused"
        assert await client.runs.resume(run.id) == "queued"
        done = await client.runs.wait(run.id, timeout=30)
        assert (done.status, done.result) == ("completed", "finished")
        types = [e.type for e in await client.runs.events(run.id)]
        assert "run.resumed" in types and types[-1] == "run.completed"
        assert [e["key"] for e in read_ledger(tmp_path / "ledger")] == ["a", "b"]

        # list: filters and cursor pages, newest first.
        others = [
            (await client.runs.start(spec={"name": "pager", "model": _text("p")}, input="p")).id
            for _ in range(3)
        ]
        for other in others:
            await client.runs.wait(other, timeout=30)
        seen: list[str] = []
        cursor = None
        while True:
            page, cursor = await client.runs.list(agent="pager", limit=2, cursor=cursor)
            assert len(page) <= 2 and {r.agent for r in page} == {"pager"}
            seen += [r.id for r in page]
            if cursor is None:
                break
        assert seen == list(reversed(others))
        completed, _ = await client.runs.list(status="completed", agent="test-agent")
        assert [r.id for r in completed] == [run.id]
        assert (await client.runs.list(status="failed"))[0] == []


def _text(text: str) -> dict[str, Any]:
    return {"provider": "scripted", "responses": [{"text": text}]}


async def test_approve_deny_and_fork(server: Server, tmp_path: Path) -> None:
    spec = write_agent(
        tmp_path / "a.yaml",
        [_call("a", "b"), {"text": "decided"}],
        ["ledgertools:idem_record"],
        approvals={"require_for": ["idem_record"]},
    )
    async with AsyncClient(server.url) as client:
        await client.agents.create_from_file(spec)
        run = await client.runs.start("test-agent", input="go")
        await _until_status(client, run.id, "waiting")
        with pytest.raises(ApiError) as info:
            await client.runs.approve(run.id, "call_9_9")
        assert info.value.status == 409 and info.value.type.endswith("/no-pending-approval")
        granted = await client.runs.approve(run.id, "call_1_1")
        assert (granted.type, granted.data["call_id"]) == ("approval.granted", "call_1_1")
        denied = await client.runs.deny(run.id, "call_1_2", "not this one")
        assert denied.type == "approval.denied"
        assert denied.data == {"call_id": "call_1_2", "reason": "not this one"}
        done = await client.runs.wait(run.id, timeout=30)
        assert (done.status, done.result) == ("completed", "decided")
        source = await client.runs.events(run.id)
        failed = [e.data["error"] for e in source if e.type == "tool.failed"]
        assert failed == ["denied by a human: not this one"]
        assert [e["key"] for e in read_ledger(tmp_path / "ledger")] == ["a"]

        # fork after both calls are resolved: the fork keeps the prefix and runs on.
        k = max(e.seq or 0 for e in source if e.type in ("tool.completed", "tool.failed"))
        fork = await client.runs.fork(run.id, k)
        assert fork.id != run.id and fork.agent_version == 1
        forked_done = await client.runs.wait(fork.id, timeout=30)
        assert forked_done.status == "completed"
        forked = await client.runs.events(fork.id)
        assert [(e.type, e.data) for e in forked[:k]] == [(e.type, e.data) for e in source[:k]]
        assert forked[k].type == "run.forked"
        assert forked[k].data == {"from_run": run.id, "at_seq": k, "agent_version": 1}
        assert await client.runs.events(run.id) == source, "the source is untouched"
        with pytest.raises(ApiError) as info:
            await client.runs.fork(run.id, source[-1].seq + 1 if source[-1].seq else 1)
        assert info.value.status in (409, 422)


async def test_stream_gives_up_after_max_reconnects() -> None:
    """With nothing listening, the stream raises after `max_reconnects` failures."""
    async with AsyncClient(f"http://127.0.0.1:{free_port()}", reconnect_delay=0.01) as client:
        with pytest.raises(httpx.ConnectError):
            async for _ in client.runs.stream("run_x", max_reconnects=2):
                pass
