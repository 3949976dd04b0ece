"""`everruns doctor` names what needs attention, and exits non-zero when something does."""

from __future__ import annotations

import json
import time
from pathlib import Path

import sqlalchemy as sa

from everruns.spec import load_spec
from everruns.store import Store
from everruns.store.health import Thresholds
from everruns.store.schema import runs, workers
from helpers import cli, env_for, write_agent


async def test_doctor_names_a_stuck_run_an_open_breaker_and_a_dead_worker(
    tmp_path: Path, sqlite_url: str
) -> None:
    store = await Store.open(sqlite_url)
    try:
        assert await store.health.attention() == [], "a fresh database needs nothing"
        spec = load_spec(write_agent(tmp_path / "a.yaml", [{"text": "hi"}], name="stuck-agent"))
        stuck = await store.create_run(spec, "go")
        fine = await store.create_run(spec, "go")  # due just now: not stuck yet
        await store.record_outcome("openai:gpt-x", ok=False, threshold=1, cooldown=600)
        await store.register_worker("w-dead", version="0.1.0", clock_skew=0.0)
        await store.register_worker("w-live", version="0.1.0", clock_skew=9.5)
        now = time.time()
        async with store.engine.begin() as conn:
            await conn.execute(sa.update(runs).where(runs.c.id == stuck).values(wake_at=now - 600))
            await conn.execute(
                sa.update(workers).where(workers.c.id == "w-dead").values(heartbeat_at=now - 300)
            )
        found = await store.health.attention(Thresholds(max_skew=2.0))
    finally:
        await store.close()
    checks = {(f["check"], f["subject"]) for f in found}
    assert checks == {
        ("stuck_run", stuck),
        ("breaker_open", "openai:gpt-x"),
        ("dead_worker", "w-dead"),
        ("clock_skew", "w-live"),
    }, found
    assert fine not in {f["subject"] for f in found}

    result = cli("doctor", "--json", env=env_for(sqlite_url))
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["schema"]["current"] is True
    assert [w["id"] for w in report["workers"]] == ["w-live"]
    named = {(f["check"], f["subject"]) for f in report["attention"]}
    assert {
        ("stuck_run", stuck),
        ("breaker_open", "openai:gpt-x"),
        ("dead_worker", "w-dead"),
    } <= named
    text = cli("doctor", env=env_for(sqlite_url))
    assert text.returncode == 1
    assert "needs attention (4)" in text.stdout
    for word in (stuck, "openai:gpt-x", "w-dead", "+9.5s"):
        assert word in text.stdout, text.stdout


def test_doctor_on_an_unreachable_database_exits_2(tmp_path: Path) -> None:
    env = env_for("postgresql://nobody@127.0.0.1:1/none")
    result = cli("doctor", env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "cannot be reached" in result.stderr


async def test_an_old_schema_is_named_and_not_ready(sqlite_url: str) -> None:
    store = await Store.open(sqlite_url)
    try:
        async with store.engine.begin() as conn:
            await conn.execute(sa.text("UPDATE alembic_version SET version_num = '0007'"))
        (finding,) = await store.health.attention()
        current, revision, _head = await store.health.migrations_current()
    finally:
        await store.close()
    assert finding["check"] == "migrations" and "everruns db upgrade" in finding["message"]
    assert (current, revision) == (False, "0007")
