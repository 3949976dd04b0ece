"""What the worker and `start` tell a user: `--concurrency 0` is refused, each run the
worker lets go of gets a line saying how it ended (or why it waits), and a run started
without `--input` says it waits for a message."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from typer.testing import CliRunner

from everruns.cli import app
from everruns.cli.serve import _report
from everruns.engine.worker import Worker
from everruns.spec import parse_spec
from everruns.store import Store
from helpers import wait_until, write_agent


def test_concurrency_zero_is_refused() -> None:
    result = CliRunner().invoke(app, ["worker", "--concurrency", "0", "--db", "x.db"])
    assert result.exit_code == 2 and "--concurrency" in result.output
    assert "Traceback" not in result.output


def test_start_without_input_says_the_run_waits_for_a_message(tmp_path: Path) -> None:
    spec = write_agent(tmp_path / "a.yaml", [{"text": "hi"}])
    db = f"sqlite:///{tmp_path / 'e.db'}"
    result = CliRunner().invoke(app, ["start", str(spec), "--db", db])
    assert result.exit_code == 0
    run_id = result.stdout.strip()
    assert f"waits for its first message: everruns message {run_id} TEXT" in result.stderr


def _spec(name: str, responses: list[dict[str, object]], **extra: object) -> object:
    return parse_spec(
        {"name": name, "model": {"provider": "scripted", "responses": responses}, **extra}
    )


async def _finish_three(db: str) -> tuple[list[str], list[str], Store]:
    store = await Store.open(db)
    done = await store.create_run(_spec("ok", [{"text": "fine"}]), "go")
    failed = await store.create_run(
        _spec("bad", [{"text": "x", "error": "boom", "error_class": "invalid_request"}]), "go"
    )
    waiting = await store.create_run(_spec("idle", [{"text": "x"}]), None)
    ids = [done, failed, waiting]
    finished: list[str] = []
    worker = Worker(store, lease_ttl=2, only=ids, poll_interval=0.05, on_finish=finished.append)
    task = asyncio.create_task(worker.run())

    async def settled() -> bool:
        return set(ids) <= set(finished)

    try:
        await wait_until(settled, timeout=60, what="the worker to let go of all three runs")
    finally:
        worker.stop()
        await task
    return ids, finished, store


def test_the_worker_says_how_each_run_ended(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def go() -> tuple[list[str], list[str]]:
        ids, finished, store = await _finish_three(f"sqlite:///{tmp_path / 'e.db'}")
        log = logging.getLogger("everruns.worker.test")
        with caplog.at_level(logging.INFO, logger="everruns.worker.test"):
            for run_id in ids:
                await _report(store, run_id, log)
        await store.close()
        return ids, finished

    (done, failed, waiting), finished = asyncio.run(go())
    assert set(finished) >= {done, failed, waiting}  # on_finish saw each
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith(f"completed {done} (1 steps, ")
    assert lines[1].startswith(f"failed {failed}: ") and "boom" in lines[1]
    assert lines[2] == f"released {waiting}: waiting for a signal (everruns status {waiting})"
