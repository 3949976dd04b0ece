"""The run verbs through the HTTP API, the SDK and the CLI: receipts, webhook routes, the
verdict field, `start --idempotency-key`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from everruns import Client
from everruns.client import ApiError
from helpers import Server, cli, env_for, write_agent

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def server(db_url: str, tmp_path: Path) -> Iterator[Server]:
    s = Server(env_for(db_url), "--lease-ttl", "2", log=tmp_path / "server.log")
    try:
        yield s
    finally:
        s.stop()


def _spec(responses: list[dict[str, object]]) -> dict[str, object]:
    return {"name": "verbs", "model": {"provider": "scripted", "responses": responses}}


def _until_event(client: Client, run_id: str, kind: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not any(e.type == kind for e in client.runs.events(run_id)):
        assert time.monotonic() < deadline, f"no {kind} in {run_id}"
        time.sleep(0.05)


def test_verbs_receipts_and_webhook_routes(server: Server) -> None:
    with Client(server.url) as client:
        # Webhooks: the SSRF guard (loopback refused by this deployment), validation, CRUD.
        with pytest.raises(ApiError) as refused:
            client.webhooks.create("http://127.0.0.1:9/hook", ["run.completed"])
        assert refused.value.status == 422 and "refused" in refused.value.detail
        bad = httpx.post(
            f"{server.url}/v1/webhooks", json={"url": "http://93.184.216.34/", "events": ["x"]}
        )
        assert bad.status_code == 422 and "unknown event" in bad.text
        hook = client.webhooks.create("http://93.184.216.34/hook", ["run.failed"], secret_ref="s")
        assert [h.id for h in client.webhooks.list()] == [hook.id]
        client.webhooks.delete(hook.id)
        assert client.webhooks.list() == []
        with pytest.raises(ApiError) as gone:
            client.webhooks.delete(hook.id)
        assert gone.value.status == 404
        assert client.webhooks.deliveries() == []

        # start with a key: one run however often it is retried.
        spec = _spec([{"delay": 3, "text": "first"}, {"text": "after the steer"}])
        run = client.runs.start(spec=spec, input="go", idempotency_key="start-1")
        assert client.runs.start(spec=spec, input="go", idempotency_key="start-1").id == run.id
        assert run.outcome is None

        # steer: a receipt with the seq of the journaled message; the same turn goes on.
        _until_event(client, run.id, "llm.started")
        receipt = client.runs.steer(run.id, "say something else")
        assert receipt.outcome == "steered" and receipt.seq is not None
        done = client.runs.wait(run.id, timeout=30)
        assert (done.status, done.result) == ("completed", "after the steer")
        event = next(e for e in client.runs.events(run.id) if e.seq == receipt.seq)
        assert event.data == {"content": "say something else", "steer": True}

        # interrupt: the receipt carries the seq of run.interrupted written by the worker.
        slow = client.runs.start(spec=_spec([{"delay": 30, "text": "never"}]), input="go")
        _until_event(client, slow.id, "llm.started")
        cut = client.runs.interrupt(slow.id)
        assert cut.outcome == "interrupted" and cut.seq is not None
        assert client.runs.events(slow.id)[-1].type == "run.interrupted"
        assert client.runs.get(slow.id).status == "waiting"
        moot = client.runs.interrupt(run.id)
        assert (moot.outcome, moot.seq) == ("completed", None)
        cancelled = httpx.post(f"{server.url}/v1/runs/{slow.id}/cancel").json()
        assert cancelled["outcome"] == "cancelled" and cancelled["seq"] == cut.seq + 1


def test_cli_start_with_an_idempotency_key_and_interrupt(sqlite_url: str, tmp_path: Path) -> None:
    env = env_for(sqlite_url)
    spec = write_agent(tmp_path / "a.yaml", [{"text": "hi"}])
    first = cli("start", str(spec), "-i", "x", "--idempotency-key", "k1", env=env)
    assert first.returncode == 0, first.stderr
    again = cli("start", str(spec), "-i", "x", "--idempotency-key", "k1", env=env)
    assert again.stdout == first.stdout
    cut = cli("interrupt", first.stdout.strip(), env=env)  # queued, no worker: at once
    assert cut.returncode == 0 and "interrupted as seq 2" in cut.stdout, cut.stderr
