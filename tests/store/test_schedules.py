"""Schedules and agent memory, on SQLite and PostgreSQL.

Firing is driven with an injected clock (`fire_due_schedules(now=...)`) except in
the fleet test, where two real `everruns worker` processes fire an `every 1s`
schedule on the wall clock. Each scheduled run records its tick in the data of
its run.created event, so a tick fired twice would show as a duplicate.
"""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from typer.testing import CliRunner, Result

from everruns.api import ApiConfig, create_app
from everruns.cli import app as cli_app
from everruns.core.events import TERMINAL_STATUSES, Event, EventType
from everruns.core.schedule import parse_schedule
from everruns.engine.worker import Worker
from everruns.settings import Settings
from everruns.spec import AgentSpec, SpecError, ToolSpec, load_spec, parse_spec
from everruns.store import Store, StoreError
from everruns.store.schema import workers
from everruns.tools.base import ToolContext
from everruns.tools.builtins import build_builtin
from helpers import env_for, start_worker, stop, wait_until, write_agent

pytestmark = pytest.mark.timeout(60)

T0 = 1_000_000.0  # the injected clock starts here (a multiple of every interval used)


def _spec(name: str, schedule: str = "every 1s", **fields: Any) -> AgentSpec:
    return parse_spec(
        {
            "name": name,
            "model": {"provider": "scripted", "responses": [{"text": "done"}]},
            "schedule": schedule,
            **fields,
        }
    )


async def _scheduled_runs(store: Store, agent: str) -> list[dict[str, Any]]:
    """The `schedule` info of each run of `agent` (from run.created), oldest first."""
    out = []
    for row in reversed(await store.list_runs(agent=agent, limit=1000)):
        created = (await store.load_events(row.id, limit=1))[0]
        assert created.type == EventType.RUN_CREATED
        out.append({"run_id": row.id, "status": row.status, **created.data["schedule"]})
    return out


# ------------------------------------------------------------ expressions and spec


def test_expressions() -> None:
    every = parse_schedule("every 2s")
    assert every.next_after(T0) == T0 + 2 and every.next_after(T0 + 0.5) == T0 + 2
    assert every.latest_at_or_before(T0 + 5.9) == T0 + 4
    seconds = parse_schedule("*/10 * * * * *")  # 6 fields: seconds first
    assert seconds.next_after(T0) == T0 + 10 and seconds.next_after(T0 + 10) == T0 + 20
    minute = parse_schedule("*/5 * * * *")
    assert minute.next_after(T0) == math.floor(T0 / 300) * 300 + 300
    assert parse_schedule("@hourly").next_after(0.0) == 3600.0
    for bad, words in [
        ("* * *", "3 fields"),
        ("61 * * * *", "not a valid cron"),
        ("every 0.2s", "too often"),
        ("every soon", "not a duration"),
    ]:
        with pytest.raises(ValueError, match=words):
            parse_schedule(bad)


def test_spec_fields_are_validated_with_their_names() -> None:
    spec = _spec("s", "every 2s", schedule_input="tick", schedule_overlap="queue")
    assert (spec.schedule, spec.schedule_input, spec.overlap) == ("every 2s", "tick", "queue")
    assert _spec("s").overlap == "skip"
    assert (
        "schedule"
        not in parse_spec(
            {"name": "n", "model": {"provider": "scripted", "responses": [{"text": "x"}]}}
        ).to_dict()
    )
    with pytest.raises(SpecError, match=r"schedule: .*not a valid cron"):
        _spec("s", "61 * * * *")
    with pytest.raises(SpecError, match=r"schedule_overlap: "):
        _spec("s", schedule_overlap="sometimes")


# ------------------------------------------------------------ firing


async def test_each_tick_fires_once_across_concurrent_callers(db_url: str) -> None:
    stores = [await Store.open(db_url) for _ in range(4)]
    try:
        await stores[0].save_schedule(_spec("tick", schedule_overlap="queue"), now=T0)
        for k in range(1, 6):
            now = T0 + k + 0.25
            fired = await asyncio.gather(
                *(s.fire_due_schedules(now=now) for s in stores for _ in range(3))
            )
            created = [r for batch in fired for r in batch if r.action == "created"]
            assert len(created) == 1, fired
            assert created[0].tick == T0 + k and created[0].next_fire_at == T0 + k + 1
        # Not due again until the next tick.
        assert await stores[1].fire_due_schedules(now=T0 + 5.9) == []
        runs = await _scheduled_runs(stores[0], "tick")
        assert [r["tick"] for r in runs] == [T0 + k for k in range(1, 6)]
        assert all(r["catch_up"] is False and r["overlap"] == "queue" for r in runs)
        listed = await stores[2].get_schedule("tick")
        assert listed is not None and listed["next_fire_at"] == T0 + 6
        assert listed["last_run_id"] == runs[-1]["run_id"]
    finally:
        for s in stores:
            await s.close()


async def test_missed_ticks_are_caught_up_by_one_run(store: Store) -> None:
    await store.save_schedule(_spec("late", "*/10 * * * * *"), now=T0)  # next tick T0+10
    fired = await store.fire_due_schedules(now=T0 + 45)  # T0+10, +20, +30, +40 were missed
    assert [(r.action, r.tick, r.due_at, r.next_fire_at) for r in fired] == [
        ("created", T0 + 40, T0 + 10, T0 + 50)
    ]
    assert await store.fire_due_schedules(now=T0 + 49) == []
    (run,) = await _scheduled_runs(store, "late")
    assert run["catch_up"] is True and run["tick"] == T0 + 40

    # `every`, after three missed ticks: one run; the clock jumping again: one more.
    await store.save_schedule(_spec("every", "every 2s", schedule_overlap="queue"), now=T0)
    assert len(await store.fire_due_schedules(now=T0 + 7)) == 1  # ticks T0+2, +4, +6
    assert len(await store.fire_due_schedules(now=T0 + 7.5)) == 0
    assert [r.agent for r in await store.fire_due_schedules(now=T0 + 100)] == ["every", "late"]
    assert [r["tick"] for r in await _scheduled_runs(store, "every")] == [T0 + 6, T0 + 100]


async def test_pause_resume_and_remove(store: Store) -> None:
    await store.save_schedule(_spec("pausing", schedule_overlap="queue"), now=T0)
    await store.set_schedule_enabled("pausing", False, now=T0)
    assert await store.fire_due_schedules(now=T0 + 10) == []
    resumed = await store.set_schedule_enabled("pausing", True, now=T0 + 10.5)
    assert resumed is not None and resumed["next_fire_at"] == T0 + 11  # no catch-up of a pause
    assert len(await store.fire_due_schedules(now=T0 + 11)) == 1
    assert await store.delete_schedule("pausing") is True
    assert await store.delete_schedule("pausing") is False
    assert await store.fire_due_schedules(now=T0 + 20) == []
    assert await store.set_schedule_enabled("pausing", True) is None
    with pytest.raises(StoreError, match="schedule: "):
        await store.put_schedule("pausing", "every now and then")
    with pytest.raises(StoreError, match="no agent 'ghost'"):
        await store.put_schedule("ghost", "every 1s")


# ------------------------------------------------------------ overlap policies


async def test_overlap_skip(store: Store) -> None:
    await store.save_schedule(_spec("skipper"), now=T0)
    (first,) = await store.fire_due_schedules(now=T0 + 1)
    assert first.action == "created" and first.run_id
    (second,) = await store.fire_due_schedules(now=T0 + 2)
    assert second.action == "skipped" and first.run_id in (second.reason or "")
    assert second.next_fire_at == T0 + 3
    assert len(await store.list_runs(agent="skipper")) == 1
    await store.cancel(first.run_id)  # the previous run ended: the next tick fires
    (third,) = await store.fire_due_schedules(now=T0 + 3)
    assert third.action == "created"
    assert [r["tick"] for r in await _scheduled_runs(store, "skipper")] == [T0 + 1, T0 + 3]


async def test_overlap_queue(store: Store) -> None:
    await store.save_schedule(_spec("queuer", schedule_overlap="queue"), now=T0)
    for k in (1, 2, 3):
        (result,) = await store.fire_due_schedules(now=T0 + k)
        assert result.action == "created" and not result.cancelled
    statuses = [r["status"] for r in await _scheduled_runs(store, "queuer")]
    assert statuses == ["queued", "queued", "queued"]


async def test_overlap_cancel_previous(store: Store) -> None:
    await store.save_schedule(_spec("canceller", schedule_overlap="cancel_previous"), now=T0)
    (first,) = await store.fire_due_schedules(now=T0 + 1)
    (second,) = await store.fire_due_schedules(now=T0 + 2)
    assert second.action == "created" and second.cancelled == {first.run_id: "cancelled"}
    assert first.run_id is not None and second.run_id is not None
    old = await store.get_run(first.run_id)
    assert old.status == "cancelled" and (old.error or {}).get("reason") == "cancelled"
    events = await store.load_events(first.run_id)
    assert events[-1].type == EventType.RUN_CANCELLED and "superseded" in events[-1].data["reason"]
    # A run a live worker holds is asked to stop (its worker cancels it).
    claims = await store.claim("w-test", limit=10, lease_ttl=30)
    assert [c.run_id for c in claims] == [second.run_id]
    (third,) = await store.fire_due_schedules(now=T0 + 3)
    assert third.cancelled == {second.run_id: "requested"}
    held = await store.get_run(second.run_id)
    assert held.cancel_requested and held.status == "running"
    (info,) = [r for r in await _scheduled_runs(store, "canceller") if r["tick"] == T0 + 3]
    assert info["cancelled"] == [second.run_id]


# ------------------------------------------------------------ a fleet on the wall clock


async def test_two_worker_processes_fire_each_tick_once(db_url: str, tmp_path: Path) -> None:
    spec = write_agent(
        tmp_path / "fleet.yaml",
        [{"text": "done"}],
        name="fleet",
        schedule="every 1s",
        schedule_overlap="queue",
        schedule_input="scheduled",
    )
    env = env_for(db_url)
    store = await Store.open(db_url)
    procs: list[subprocess.Popen[bytes]] = []
    logs = [tmp_path / f"w{i}.log" for i in range(2)]
    try:
        for log in logs:
            procs.append(start_worker(env, "--poll-interval", "0.2", cwd=tmp_path, log=log))

        async def registered() -> bool:
            async with store.engine.connect() as conn:
                n = (await conn.execute(sa.select(sa.func.count()).select_from(workers))).scalar()
            return n == 2

        await wait_until(registered, timeout=30, interval=0.05, what="2 workers")
        saved = await store.save_schedule(load_spec(spec))  # `schedule add` (tested below)
        start = saved["updated_at"]
        await asyncio.sleep(4.2)
        assert await store.set_schedule_enabled("fleet", False) is not None
        end = time.time()  # the pause committed before this: no tick fires after it

        async def all_done() -> bool:
            rows = await store.list_runs(agent="fleet", limit=1000)
            return all(r.status == "completed" for r in rows)

        await wait_until(all_done, timeout=20, what="scheduled runs completed")
        runs = await _scheduled_runs(store, "fleet")
        alive = [p.poll() is None for p in procs]
    finally:
        codes = [stop(p) for p in procs]
        await store.close()
    text = "\n".join(log.read_text() for log in logs)
    assert all(alive) and codes == [0, 0], text
    assert "Traceback" not in text and "ERROR" not in text, text
    ticks = [r["tick"] for r in runs]
    assert max(Counter(ticks).values()) == 1, ticks  # never two runs for one tick
    elapsed = math.floor(end) - math.floor(start)  # whole-second ticks in (start, end]
    assert abs(len(runs) - elapsed) <= 1, (len(runs), elapsed, ticks)
    assert all(t == int(t) and start < t <= end for t in ticks), (start, end, ticks)
    assert saved["agent_version"] == 1 and saved["enabled"] is True
    assert all(r["status"] == "completed" for r in runs)


# ------------------------------------------------------------ memory


async def _execute(store: Store, run_id: str) -> None:
    worker = Worker(store, only=[run_id], poll_interval=0.05, lease_ttl=5, settings=Settings())
    task = asyncio.create_task(worker.run())
    try:

        async def finished() -> bool:
            return (await store.get_run(run_id)).status in TERMINAL_STATUSES

        await wait_until(finished, timeout=20, interval=0.05, what=f"{run_id} finished")
    finally:
        worker.stop()
        await task


def _tool_output(events: list[Event], name: str) -> str:
    (done,) = [e for e in events if e.type == EventType.TOOL_COMPLETED and e.data["name"] == name]
    return str(done.data["output"])


async def test_scheduled_runs_see_the_notes_of_earlier_runs(store: Store) -> None:
    spec = parse_spec(
        {
            "name": "rememberer",
            "schedule": "every 1s",
            "schedule_input": "check the weather",
            "tools": [{"builtin": "memory"}],
            "model": {
                "provider": "scripted",
                "responses": [
                    {"tool_calls": [{"name": "recall", "arguments": {}}]},
                    {"tool_calls": [{"name": "remember", "arguments": {"text": "it rained"}}]},
                    {"text": "done"},
                ],
            },
        }
    )
    await store.save_schedule(spec, now=T0)
    (first,) = await store.fire_due_schedules(now=T0 + 1)
    assert first.run_id is not None
    await _execute(store, first.run_id)
    events = await store.load_events(first.run_id)
    assert (await store.get_run(first.run_id)).status == "completed", events
    assert _tool_output(events, "recall") == "(no notes yet)"
    (second,) = await store.fire_due_schedules(now=T0 + 2)
    assert second.action == "created" and second.run_id is not None
    await _execute(store, second.run_id)
    recalled = json.loads(_tool_output(await store.load_events(second.run_id), "recall"))
    assert [(n["text"], n["run_id"]) for n in recalled] == [("it rained", first.run_id)]
    notes = await store.recall("rememberer")
    assert [(n["text"], n["run_id"]) for n in notes] == [
        ("it rained", first.run_id),
        ("it rained", second.run_id),
    ]
    assert notes[0]["ts"] <= notes[1]["ts"]


async def test_remember_is_idempotent_per_key(store: Store) -> None:
    tools = {t.name: t for t in build_builtin(ToolSpec(builtin="memory"))}
    assert tools["remember"].effect == "idempotent" and tools["recall"].effect == "pure"
    ctx = ToolContext(
        run_id="run_x",
        tool_call_id="call_0_0",
        idempotency_key="run_x:call_0_0",
        attempt=1,
        agent="memo",
        store=store,
    )
    first = await tools["remember"].invoke({"text": "once"}, ctx)
    again = await tools["remember"].invoke({"text": "once"}, ctx)  # a retried call
    assert first == again
    await store.remember("memo", "twice", run_id="run_y", idempotency_key="run_y:call_0_0")
    await store.remember("memo", "twice", run_id="run_y", idempotency_key="run_y:call_0_0")
    await store.remember("other-agent", "elsewhere", idempotency_key="run_x:call_0_0")
    recalled = await tools["recall"].invoke({}, ctx)
    assert [(n["text"], n["run_id"]) for n in recalled] == [("once", "run_x"), ("twice", "run_y")]
    assert [n["text"] for n in await store.recall("memo", limit=1)] == ["twice"]  # the newest
    with pytest.raises(Exception, match="memory is only available"):
        await tools["recall"].invoke({}, ToolContext("r", "c", "k", 1))


# ------------------------------------------------------------ CLI and HTTP API


def test_cli_schedule_commands(sqlite_url: str, tmp_path: Path) -> None:
    runner = CliRunner()

    def run(*args: str) -> Result:
        return runner.invoke(cli_app, [*args, "--db", sqlite_url])

    plain = write_agent(tmp_path / "plain.yaml", [{"text": "x"}], name="plain")
    missing = run("schedule", "add", str(plain))
    assert missing.exit_code == 2 and "schedule: missing" in missing.stderr
    bad = write_agent(tmp_path / "bad.yaml", [{"text": "x"}], name="bad", schedule="* *")
    invalid = run("schedule", "add", str(bad))
    assert invalid.exit_code == 2 and "schedule: '* *' has 2 fields" in invalid.stderr
    good = write_agent(tmp_path / "good.yaml", [{"text": "x"}], name="good", schedule="0 9 * * 1-5")
    added = run("schedule", "add", str(good), "--latest")
    assert added.exit_code == 0 and "scheduled good (latest)" in added.stdout, added.output
    listed = json.loads(run("schedule", "ls", "--json").stdout)
    assert [(s["agent"], s["expression"], s["agent_version"]) for s in listed] == [
        ("good", "0 9 * * 1-5", "latest")
    ]
    pinned = json.loads(run("schedule", "add", str(good), "--json").stdout)  # replaces it
    assert pinned["agent_version"] == 1 and pinned["created_at"] == listed[0]["created_at"]
    assert "paused good" in run("schedule", "pause", "good").stdout
    assert json.loads(run("schedule", "ls", "--json").stdout)[0]["enabled"] is False
    assert "resumed good" in run("schedule", "resume", "good").stdout
    assert "good" in run("schedule", "ls").stdout
    assert run("schedule", "rm", "good").exit_code == 0
    gone = run("schedule", "rm", "good")
    assert gone.exit_code == 1 and "no schedule for agent 'good'" in gone.stderr
    assert run("schedule", "pause", "good").exit_code == 1


def test_http_schedule_and_notes_routes(sqlite_url: str) -> None:
    app = create_app(ApiConfig(database_url=sqlite_url, embedded_worker=False))
    spec = _spec("api-agent", "every 1h", schedule_input="hello").to_dict()
    # With auth off the app serves loopback names only (see docs/security.md).
    with TestClient(app, base_url="http://127.0.0.1") as client:
        created = client.post("/v1/schedules", json={"spec": spec})
        assert created.status_code == 201, created.text
        body = created.json()
        assert body["agent_version"] == 1 and body["input"] == "hello"
        assert body["overlap"] == "skip" and body["next_fire_at"] > time.time()
        # A stored agent, following its latest version, with overrides.
        updated = client.post(
            "/v1/schedules",
            json={"agent": "api-agent", "schedule": "*/5 * * * *", "overlap": "queue"},
        )
        assert updated.status_code == 201, updated.text
        assert updated.json()["agent_version"] == "latest"
        assert updated.json()["expression"] == "*/5 * * * *"
        bad = client.post("/v1/schedules", json={"agent": "api-agent", "schedule": "* *"})
        assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "schedule"
        assert client.post("/v1/schedules", json={"agent": "nobody"}).status_code == 404
        listed = client.get("/v1/schedules").json()
        assert [s["agent"] for s in listed] == ["api-agent"]
        paused = client.post("/v1/schedules/api-agent/pause")
        assert paused.status_code == 200 and paused.json()["enabled"] is False
        assert client.post("/v1/schedules/api-agent/resume").json()["enabled"] is True
        assert client.delete("/v1/schedules/api-agent").status_code == 204
        assert client.delete("/v1/schedules/api-agent").status_code == 404
        assert client.get("/v1/schedules/api-agent").status_code == 404

        async def note() -> None:
            async with await Store.open(sqlite_url) as store:
                await store.remember("api-agent", "kept", run_id="run_1", idempotency_key="k")

        asyncio.run(note())
        notes = client.get("/v1/agents/api-agent/notes").json()
        assert [(n["text"], n["run_id"]) for n in notes] == [("kept", "run_1")]
