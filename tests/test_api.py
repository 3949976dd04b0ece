"""The HTTP API and the SDK against real server processes (uvicorn), on both databases."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from cryptography.fernet import Fernet

from everruns import Client
from everruns.api.openapi import document
from everruns.client import ApiError
from helpers import env_for, start_worker, stop, write_agent

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, env: dict[str, str], *args: str, log: Path):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "everruns.cli", "server", "--port", str(self.port), *args],
            env=env,
            stdout=open(log, "ab"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/v1/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        self.stop()
        raise AssertionError(f"server did not start: {log.read_text()[-2000:]}")

    def stop(self) -> None:
        stop(self.proc)  # type: ignore[arg-type]


@pytest.fixture
def server_env(db_url: str, tmp_path: Path) -> dict[str, str]:
    return env_for(db_url, EVERRUNS_TEST_LEDGER=str(tmp_path / "ledger"))


@pytest.fixture
def server(server_env: dict[str, str], tmp_path: Path) -> Iterator[Server]:
    s = Server(server_env, "--lease-ttl", "2", log=tmp_path / "server.log")
    try:
        yield s
    finally:
        s.stop()


def _agent(tmp_path: Path, responses: list[dict[str, Any]], **fields: Any) -> Path:
    return write_agent(tmp_path / "agent.yaml", responses, ["ledgertools:idem_record"], **fields)


STEPS = [
    {"tool_calls": [{"name": "idem_record", "arguments": {"key": "a"}}], "delay": 0.3},
    {"text": "All done with the api.", "delay": 0.3},
]


def test_full_flow_through_the_sdk(server: Server, tmp_path: Path) -> None:
    with Client(server.url) as client:
        agent = client.agents.create_from_file(_agent(tmp_path, STEPS))
        assert (agent.name, agent.version) == ("test-agent", 1)
        run = client.runs.start(agent.name, input="Survey durable execution")
        seen = [e for e in client.runs.stream(run.id) if not e.ephemeral]
        assert seen[0].type == "run.created" and seen[-1].type == "run.completed"
        assert [e.seq for e in seen] == list(range(1, len(seen) + 1))
        done = client.runs.wait(run.id, timeout=30)
        assert done.status == "completed" and done.result == "All done with the api."
        assert done.usage.total_tokens > 0
        # Agents: get, version, a changed spec is a new version, archive.
        assert client.agents.get("test-agent").version == 1
        assert client.agents.get("test-agent", 1).spec is not None
        changed = client.agents.create_from_file(_agent(tmp_path, STEPS, system_prompt="New."))
        assert changed.version == 2
        # Cursor pagination over more runs than a page.
        for i in range(4):
            client.runs.start(agent.name, input=f"more {i}")
        first, cursor = client.runs.list(limit=3)
        assert len(first) == 3 and cursor is not None
        second, cursor2 = client.runs.list(limit=3, cursor=cursor)
        assert len(second) == 2 and cursor2 is None
        assert not {r.id for r in first} & {r.id for r in second}
        assert httpx.post(f"{server.url}/v1/agents/test-agent/archive").status_code == 200


def test_sse_reconnect_replays_each_event_exactly_once(server: Server, tmp_path: Path) -> None:
    slow = [
        {"tool_calls": [{"name": "idem_record", "arguments": {"key": k}}], "delay": 0.4}
        for k in "abcd"
    ] + [{"text": "streamed and done", "delay": 0.4}]
    with Client(server.url) as client:
        client.agents.create_from_file(_agent(tmp_path, slow))
        run = client.runs.start("test-agent", input="go")
        got: list[int] = []
        # Drop the connection after a few events, then reconnect with Last-Event-ID.
        with httpx.stream("GET", f"{server.url}/v1/runs/{run.id}/events/stream", timeout=30) as r:
            for line in r.iter_lines():
                if line.startswith("id: "):
                    got.append(int(line[4:]))
                if len(got) == 4:
                    break
        last = got[-1]
        time.sleep(1.0)  # events keep coming while we are away
        for event in client.runs.stream(run.id, after=last):
            if not event.ephemeral:
                assert event.seq is not None
                got.append(event.seq)
        journal = [e.seq for e in client.runs.events(run.id)]
        assert got == journal, "every durable event once and in order"
        # ?after= works without the header too.
        r = httpx.get(
            f"{server.url}/v1/runs/{run.id}/events/stream?after={journal[-2]}", timeout=30
        )
        assert [ln for ln in r.text.splitlines() if ln.startswith("id: ")] == [f"id: {journal[-1]}"]


def test_notify_delivery_and_takeover_while_streaming(pg_url: str, tmp_path: Path) -> None:
    """API node without a worker; workers are separate processes on PostgreSQL."""
    env = env_for(pg_url, EVERRUNS_TEST_LEDGER=str(tmp_path / "ledger"))
    api = Server(env, "--no-worker", log=tmp_path / "api.log")
    steps = [
        {
            "tool_calls": [
                {
                    "name": "idem_record",
                    "arguments": {"key": k},
                }
            ],
            "delay": 0.8,
        }
        for k in "abc"
    ] + [{"text": "finished after takeover", "delay": 0.3}]
    worker = start_worker(env, "--lease-ttl", "1", "--poll-interval", "0.1")
    try:
        with Client(api.url) as client:
            client.agents.create_from_file(_agent(tmp_path, steps))
            run = client.runs.start("test-agent", input="go")
            events = []
            lags = []
            killed = False
            for event in client.runs.stream(run.id):
                if event.ephemeral:
                    continue
                events.append(event)
                assert event.ts is not None
                lags.append(time.time() - event.ts)
                if event.type == "tool.completed" and not killed:
                    worker.kill()  # SIGKILL mid-run, while the client streams
                    worker.wait(10)
                    killed = True
                    worker = start_worker(env, "--lease-ttl", "1", "--poll-interval", "0.1")
            epochs = [e.data["epoch"] for e in events if e.type == "run.started"]
            assert events[-1].type == "run.completed"
            assert epochs == sorted(epochs) and epochs[-1] > epochs[0], "the takeover was seen"
            assert [e.seq for e in events] == list(range(1, len(events) + 1))
            # The API polls only every 5 s while LISTENing: sub-second delivery means NOTIFY.
            assert sorted(lags)[len(lags) // 2] < 1.0, lags
    finally:
        stop(worker)
        api.stop()


def test_pause_resume_message_approve_fork_cancel(server: Server, tmp_path: Path) -> None:
    steps = [
        {"tool_calls": [{"name": "idem_record", "arguments": {"key": "a"}}], "delay": 0.5},
        {"text": "first answer", "delay": 0.5},
        {"text": "answer to the follow-up", "delay": 0.2},
    ]
    with Client(server.url) as client:
        client.agents.create_from_file(_agent(tmp_path, steps))
        run = client.runs.start("test-agent", input="go")
        assert client.runs.pause(run.id) in ("paused", "requested")
        deadline = time.monotonic() + 20
        while client.runs.get(run.id).status != "paused" and time.monotonic() < deadline:
            time.sleep(0.2)
        paused = client.runs.get(run.id)
        assert paused.status == "paused" and paused.lease_owner is None
        time.sleep(1.5)
        assert client.runs.get(run.id).last_seq == paused.last_seq, "nothing happens while paused"
        client.runs.message(run.id, "and a follow-up?")
        assert client.runs.resume(run.id) == "queued"
        done = client.runs.wait(run.id, timeout=30)
        # The message sent while paused was journaled at once and answered in this turn.
        assert done.status == "completed" and done.result == "first answer"
        types = [e.type for e in client.runs.events(run.id)]
        assert types.index("message.user") < types.index("run.completed")
        # A message to a finished run starts a new turn.
        client.runs.message(run.id, "one more")
        assert client.runs.wait(run.id, timeout=30).result == "answer to the follow-up"
        # Fork at seq K: the prefix is identical, the source untouched.
        source = client.runs.events(run.id)
        fork = client.runs.fork(run.id, 5)
        forked = client.runs.events(fork.id)
        assert [(e.type, e.data) for e in forked[:5]] == [(e.type, e.data) for e in source[:5]]
        assert forked[5].type == "run.forked"
        assert client.runs.events(run.id) == source
        # Cancel a running run.
        slow = client.runs.start(
            spec={
                "name": "slow",
                "model": {"provider": "scripted", "responses": [{"text": "x", "delay": 30}]},
            },
            input="x",
        )
        deadline = time.monotonic() + 20
        while client.runs.get(slow.id).status != "running" and time.monotonic() < deadline:
            time.sleep(0.2)
        client.runs.cancel(slow.id)
        assert client.runs.wait(slow.id, timeout=30).status == "cancelled"


def test_approve_and_deny_through_the_api(server: Server, tmp_path: Path) -> None:
    steps = [
        {
            "tool_calls": [
                {"name": "idem_record", "arguments": {"key": "a"}},
                {"name": "idem_record", "arguments": {"key": "b"}},
            ]
        },
        {"text": "done"},
    ]
    with Client(server.url) as client:
        client.agents.create_from_file(
            _agent(tmp_path, steps, approvals={"require_for": ["idem_record"]})
        )
        run = client.runs.start("test-agent", input="go")
        deadline = time.monotonic() + 20
        while len(httpx.get(f"{server.url}/v1/approvals").json()) < 2:
            assert time.monotonic() < deadline, "approvals never requested"
            time.sleep(0.2)
        assert client.runs.get(run.id).status == "waiting"
        client.runs.approve(run.id, "call_1_1")
        client.runs.deny(run.id, "call_1_2", "not this one")
        with pytest.raises(ApiError) as info:
            client.runs.approve(run.id, "call_9_9")
        assert info.value.status == 409
        assert client.runs.wait(run.id, timeout=30).status == "completed"
        results = [e for e in client.runs.events(run.id) if e.type == "tool.failed"]
        assert results[0].data["error"] == "denied by a human: not this one"


def test_problem_details_never_500(server: Server) -> None:
    base = server.url
    r = httpx.get(f"{base}/v1/runs/run_nope")
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    assert r.json()["type"].endswith("/run-not-found")
    r = httpx.post(f"{base}/v1/runs", json={"agent": 5})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "agent"
    r = httpx.post(f"{base}/v1/runs", json={"spec": {"name": "x", "model": "nope"}})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "model"
    r = httpx.post(
        f"{base}/v1/agents", content=b"{" * 10, headers={"content-type": "application/json"}
    )
    assert r.status_code == 422
    r = httpx.post(
        f"{base}/v1/runs/x/messages",
        content=b"x" * 3_000_000,
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413
    r = httpx.get(f"{base}/v1/runs?cursor=garbage")
    assert r.status_code == 422
    r = httpx.get(f"{base}/v1/runs?status=bogus")
    assert r.status_code == 422 and "status" in r.json()["detail"]


def test_auth_tokens_and_secrets_never_leak(db_url: str, tmp_path: Path) -> None:
    key = "sk-live-SECRET-" + os.urandom(8).hex()
    env = env_for(db_url, EVERRUNS_MASTER_KEY=Fernet.generate_key().decode())
    created = subprocess.run(
        [sys.executable, "-m", "everruns.cli", "token", "create", "--name", "ci"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    log = tmp_path / "server.log"
    server = Server(env, "--auth", log=log)
    bodies: list[str] = []
    try:
        assert httpx.get(f"{server.url}/v1/runs").status_code == 401
        assert (
            httpx.get(f"{server.url}/v1/runs", headers={"Authorization": "Bearer nope"}).status_code
            == 401
        )
        auth = {"Authorization": f"Bearer {token}"}
        assert httpx.get(f"{server.url}/v1/health").status_code == 200
        r = httpx.put(f"{server.url}/v1/secrets/OPENAI_API_KEY", json={"value": key}, headers=auth)
        assert r.status_code == 204
        for path in ("/v1/secrets", "/v1/runs", "/v1/agents", "/metrics", "/openapi.json"):
            r = httpx.get(server.url + path, headers=auth)
            assert r.status_code == 200
            bodies.append(r.text)
        with Client(server.url, token) as client:
            run = client.runs.start(
                spec={
                    "name": "k",
                    "model": {"provider": "scripted", "responses": [{"text": "ok"}]},
                },
                input="x",
            )
            client.runs.wait(run.id, timeout=30)
            bodies.append(json.dumps([e.model_dump() for e in client.runs.events(run.id)]))
    finally:
        server.stop()
    assert "OPENAI_API_KEY" in bodies[0]  # the name is listed …
    for text in [*bodies, log.read_text()]:
        assert key not in text  # … the value never
    if db_url.startswith("postgresql"):
        with psycopg.connect(db_url) as conn:
            hashes = [r[0] for r in conn.execute("SELECT token_hash FROM api_tokens")]
            stored = conn.execute("SELECT ciphertext FROM secrets").fetchone()[0]
    else:
        import sqlite3

        with sqlite3.connect(db_url.removeprefix("sqlite:///")) as conn:
            hashes = [r[0] for r in conn.execute("SELECT token_hash FROM api_tokens")]
            stored = conn.execute("SELECT ciphertext FROM secrets").fetchone()[0]
    assert token not in hashes and len(hashes[0]) == 64
    assert key not in stored


def test_openapi_document_is_committed() -> None:
    committed = json.loads((ROOT / "docs" / "openapi.json").read_text())
    assert committed == document(), "docs/openapi.json is stale: run `make openapi`"


def test_schemathesis_finds_no_server_errors(sqlite_url: str, tmp_path: Path) -> None:
    env = env_for(sqlite_url, EVERRUNS_MASTER_KEY=Fernet.generate_key().decode())
    server = Server(env, "--no-worker", log=tmp_path / "server.log")
    try:
        result = subprocess.run(
            [
                str(Path(sys.executable).parent / "st"),
                "run",
                str(ROOT / "docs" / "openapi.json"),
                "--url",
                server.url,
                "--checks",
                "not_a_server_error",
                "--seed",
                "1",
                "--max-examples",
                "15",
                "--exclude-path-regex",
                "events/stream",
                "--generation-deterministic",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        server.stop()
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


async def test_async_client_streams_and_waits(sqlite_url: str, tmp_path: Path) -> None:
    from everruns import AsyncClient

    server = Server(env_for(sqlite_url), "--lease-ttl", "2", log=tmp_path / "server.log")
    try:
        async with AsyncClient(server.url) as client:
            agent = await client.agents.create_from_file(_agent(tmp_path, STEPS))
            run = await client.runs.start(agent.name, input="async")
            events = [e async for e in client.runs.stream(run.id)]
            durable = [e for e in events if not e.ephemeral]
            assert [e.seq for e in durable] == list(range(1, len(durable) + 1))
            assert durable[-1].type == "run.completed"
            assert any(e.type == "llm.delta" for e in events if e.ephemeral)
            done = await client.runs.wait(run.id, timeout=30)
            assert done.result == "All done with the api."
            slow = await client.runs.start(
                spec={
                    "name": "slow",
                    "model": {"provider": "scripted", "responses": [{"text": "x", "delay": 30}]},
                },
                input="x",
            )
            with pytest.raises(TimeoutError):
                await client.runs.wait(slow.id, timeout=1)
            await client.runs.cancel(slow.id)
    finally:
        server.stop()
