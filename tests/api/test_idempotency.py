"""Idempotency-Key on state-changing requests: real API processes sharing one database."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers import Server, env_for

pytestmark = pytest.mark.timeout(120)

SPEC = {"name": "idem", "model": {"provider": "scripted", "responses": [{"text": "hi"}]}}


def _post(url: str, path: str, key: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(url + path, json=body, headers={"Idempotency-Key": key}, timeout=30)


def test_retries_create_one_run_and_one_message_across_processes_and_restarts(
    db_url: str, tmp_path: Path
) -> None:
    env = env_for(db_url)
    a = Server(env, "--no-worker", log=tmp_path / "a.log")
    b = Server(env, "--no-worker", log=tmp_path / "b.log")
    try:
        body = {"spec": SPEC, "input": "hello"}
        # Concurrent duplicates on two API processes: one run, the same answer to all.
        replies: list[httpx.Response] = []
        threads = [
            threading.Thread(target=lambda u=u: replies.append(_post(u, "/v1/runs", "k-1", body)))
            for u in (a.url, b.url, a.url, b.url)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [r.status_code for r in replies] == [201] * 4, [r.text for r in replies]
        ids = {r.json()["id"] for r in replies}
        assert len(ids) == 1
        run_id = ids.pop()
        assert sum(r.headers.get("idempotent-replayed") == "true" for r in replies) == 3

        path = f"/v1/runs/{run_id}/messages"
        first = _post(b.url, path, "m-1", {"content": "more"})
        assert first.status_code == 201

        # Retries after the server restarted still find the keys (they are in the database):
        # one run, one message.
        a.restart()
        again = _post(a.url, "/v1/runs", "k-1", {"input": "hello", "spec": SPEC})  # key order
        assert again.status_code == 201 and again.json()["id"] == run_id
        assert len(httpx.get(a.url + "/v1/runs").json()["items"]) == 1
        for url in (a.url, b.url):
            retry = _post(url, path, "m-1", {"content": "more"})
            assert retry.status_code == 201 and retry.json() == first.json()
        events = httpx.get(f"{a.url}/v1/runs/{run_id}/events").json()
        assert [e["type"] for e in events].count("message.user") == 1

        # The same key for a different request: 422 naming the problem, nothing created.
        other = _post(a.url, "/v1/runs", "k-1", {"spec": SPEC, "input": "bye"})
        assert other.status_code == 422
        assert other.json()["type"].endswith("/idempotency-key-reused")
        assert "different request" in other.json()["detail"]

        # Errors a retry may fix are not kept; a bad key is refused.
        missing = _post(a.url, "/v1/runs/nope/messages", "m-2", {"content": "x"})
        assert missing.status_code == 404
        assert _post(a.url, "/v1/runs/nope/messages", "m-2", {"content": "x"}).status_code == 404
        bad = _post(a.url, path, "x" * 300, {"content": "x"})
        assert bad.status_code == 422 and "Idempotency-Key" in bad.json()["detail"]
    finally:
        a.stop()
        b.stop()
