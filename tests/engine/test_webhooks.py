"""Webhooks from the durable outbox: a real receiver, real worker processes, a SIGKILL
between the event and its delivery, retries while the receiver is down."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import signal
import threading
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from cryptography.fernet import Fernet

from everruns.secretbox import encrypt
from everruns.spec import parse_spec
from everruns.store import Store
from everruns.store.schema import webhook_outbox
from helpers import env_for, free_port, start_worker, stop, wait_until

pytestmark = pytest.mark.timeout(120)


class Receiver:
    """A webhook receiver on `port`: answers 500 to the first request to /global, else 200."""

    def __init__(self, port: int):
        self.got: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                receiver.got.append(
                    ({"x-path": self.path, **{k.lower(): v for k, v in self.headers.items()}}, body)
                )
                first = sum(self.path in h["x-path"] for h, _ in receiver.got) == 1
                self.send_response(500 if first and self.path == "/global" else 200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


async def test_outbox_survives_a_sigkill_and_retries_until_the_receiver_is_up(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    master = Fernet.generate_key().decode()
    monkeypatch.setenv("EVERRUNS_MASTER_KEY", master)
    settings = tmp_path / "settings.yaml"
    settings.write_text(
        yaml.safe_dump(
            {
                "allow_private_networks": True,  # the receiver is on loopback
                "webhooks": {"retry_initial": 0.3, "retry_max": 0.6, "interval": 0.1},
            }
        )
    )
    port = free_port()  # nobody listens here yet: the receiver is down
    base = f"http://127.0.0.1:{port}"
    spec = parse_spec(
        {
            "name": "hooked",
            "model": {"provider": "scripted", "responses": [{"text": "done"}]},
            "webhooks": [{"url": base + "/agent", "events": ["run.completed"]}],
        }
    )
    env = env_for(db_url, EVERRUNS_SETTINGS=str(settings), EVERRUNS_MASTER_KEY=master)
    store = await Store.open(db_url)
    receiver = None
    worker = None
    try:
        await store.put_secret("hook-secret", encrypt("s3cret"), [])
        await store.webhooks.create(base + "/global", ["run.completed"], "hook-secret")
        run_id = await store.create_run(spec, "go")
        # 1. The worker dies right after committing run.completed: the outbox row is
        # durable (same commit), no delivery has been made.
        crashing = start_worker(
            {**env, "EVERRUNS_CRASH_AT": "after:run.completed"}, "--lease-ttl", "2"
        )
        assert crashing.wait(60) == -signal.SIGKILL
        assert (await store.get_run(run_id)).status == "completed"
        async with store.engine.connect() as conn:
            outbox = (await conn.execute(sa.select(webhook_outbox))).all()
        assert [(r.run_id, r.type) for r in outbox] == [(run_id, "run.completed")]
        assert await store.webhooks.deliveries() == []

        # 2. Another worker delivers from the outbox; the receiver is down: retries.
        worker = start_worker(env, "--lease-ttl", "2", log=tmp_path / "worker.log")

        async def attempted(n: int) -> bool:
            rows = await store.webhooks.deliveries()
            return len(rows) == 2 and all(d["attempts"] >= n for d in rows)

        await wait_until(lambda: attempted(3), 60, 0.1, "3 failed attempts each")

        # 3. Up again: each event is delivered once accepted, with a stable delivery id.
        receiver = Receiver(port)

        async def delivered() -> bool:
            rows = await store.webhooks.deliveries(status="delivered")
            return len(rows) == 2

        await wait_until(delivered, 60, 0.1, "delivery")
        rows = {d["url"].rsplit("/", 1)[1]: d for d in await store.webhooks.deliveries()}
        assert rows["global"]["attempts"] >= 5  # 3+ refused, one 500, one 200
        assert rows["global"]["history"][-2]["status"] == 500
        assert (
            "refused" in str(rows["global"]["history"][0]["error"]).lower()
            or rows["global"]["history"][0]["status"] is None
        )
        by_path: dict[str, list[tuple[dict[str, str], bytes]]] = {}
        for headers, body in receiver.got:
            by_path.setdefault(json.loads(body)["id"], []).append((headers, body))
        global_id, agent_id = rows["global"]["id"], rows["agent"]["id"]
        assert len(by_path[global_id]) == 2 and len(by_path[agent_id]) == 1
        for headers, body in by_path[global_id]:
            assert headers["everruns-delivery"] == global_id  # the same id on the retry
            assert headers["everruns-event"] == "run.completed"
            stamp, mac = (p.split("=", 1)[1] for p in headers["everruns-signature"].split(","))
            want = hmac.new(b"s3cret", f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
            assert hmac.compare_digest(mac, want)
        ((agent_headers, agent_body),) = by_path[agent_id]
        assert "everruns-signature" not in agent_headers  # no secret_ref: unsigned
        payload = json.loads(agent_body)
        assert (payload["type"], payload["run_id"], payload["data"]) == (
            "run.completed",
            run_id,
            {"result": "done"},
        )
        async with store.engine.connect() as conn:
            assert (await conn.execute(sa.select(webhook_outbox))).all() == []
    finally:
        if worker is not None:
            stop(worker)
        if receiver is not None:
            receiver.close()
        await store.close()
