"""The command line, driven as a user would: real processes, real database."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import cli, env_for, start_worker, stop, write_agent

RESPONSES = [
    {"tool_calls": [{"name": "idem_record", "arguments": {"key": "a"}}]},
    {"text": "All done."},
]


@pytest.fixture
def agent(tmp_path: Path) -> Path:
    return write_agent(tmp_path / "agent.yaml", RESPONSES, [{"python": "ledgertools:idem_record"}])


def test_bad_spec_exits_2_and_names_the_field(tmp_path: Path, sqlite_url: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: x\nmodel: {provider: scripted, responses: [{text: hi}]}\nlimits: {max_steps: lots}\n"
    )
    result = cli("start", str(bad), "--input", "x", env=env_for(sqlite_url))
    assert result.returncode == 2, result.stderr
    assert "limits.max_steps" in result.stderr
    assert str(bad) in result.stderr
    # Nothing was created, not even the database.
    listed = cli("ls", "--json", env=env_for(sqlite_url))
    assert listed.returncode == 3 and "no database at" in listed.stderr


def test_unloadable_tool_exits_2(tmp_path: Path, sqlite_url: str) -> None:
    spec = write_agent(tmp_path / "a.yaml", RESPONSES, [{"python": "ledgertools:nope"}])
    result = cli("run", str(spec), "--input", "x", env=env_for(sqlite_url))
    assert result.returncode == 2
    assert "tools[0].python" in result.stderr
    assert "no attribute" in result.stderr


def test_unknown_run_id_is_a_clear_error(sqlite_url: str) -> None:
    assert cli("db", "upgrade", env=env_for(sqlite_url)).returncode == 0
    for command in (["status", "run_nope"], ["events", "run_nope"], ["cancel", "run_nope"]):
        result = cli(*command, env=env_for(sqlite_url))
        assert result.returncode == 1
        assert "no run with id 'run_nope'" in result.stderr


def test_run_json_streams_events_with_run_id(agent: Path, sqlite_url: str, tmp_path: Path) -> None:
    env = env_for(sqlite_url, EVERRUNS_TEST_LEDGER=str(tmp_path / "ledger"))
    result = cli("run", str(agent), "--input", "go", "--json", env=env)
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    types = [e["type"] for e in events]
    assert types == [
        "run.created",
        "run.started",
        "llm.started",
        "llm.completed",
        "tool.started",
        "tool.completed",
        "llm.started",
        "llm.completed",
        "run.completed",
    ]
    assert {e["run_id"] for e in events} == {events[0]["run_id"]}
    assert [e["seq"] for e in events] == list(range(1, 10))
    assert events[-1]["data"]["result"] == "All done."
    status = json.loads(cli("status", events[0]["run_id"], "--json", env=env).stdout)
    assert status["status"] == "completed"
    assert status["steps"] == 2
    assert status["result"] == "All done."
    assert status["usage"]["total_tokens"] > 0
    assert status["error"] is None


def test_failed_run_exits_1_with_reason(tmp_path: Path, sqlite_url: str) -> None:
    spec = write_agent(
        tmp_path / "a.yaml",
        [{"tool_calls": [{"name": "explode", "arguments": {"message": "kaboom"}}]}],
        [{"python": "ledgertools:explode"}],
    )
    result = cli("run", str(spec), "--input", "x", "--json", env=env_for(sqlite_url))
    assert result.returncode == 1
    events = [json.loads(line) for line in result.stdout.splitlines()]
    failed = [e for e in events if e["type"] == "tool.failed"]
    assert "RuntimeError: kaboom" in failed[0]["data"]["error"]
    assert events[-1]["type"] == "run.failed"
    assert "only 1 responses are scripted" in events[-1]["data"]["error"]


def test_start_worker_follow_ls(agent: Path, db_url: str, tmp_path: Path) -> None:
    env = env_for(db_url, EVERRUNS_TEST_LEDGER=str(tmp_path / "ledger"))
    started = cli("start", str(agent), "--input", "go", env=env)
    assert started.returncode == 0, started.stderr
    run_id = started.stdout.strip()
    assert run_id.startswith("run_")
    queued = json.loads(cli("ls", "--status", "queued", "--json", env=env).stdout)
    assert [(r["id"], r["agent"], r["status"]) for r in queued] == [
        (run_id, "test-agent", "queued")
    ]
    follower = subprocess.Popen(
        [sys.executable, "-m", "everruns.cli", "events", run_id, "--follow", "--json"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    worker = start_worker(env, "--lease-ttl", "2", "--poll-interval", "0.1")
    try:
        out, _ = follower.communicate(timeout=60)  # --follow ends by itself
        assert follower.returncode == 0
        types = [json.loads(line)["type"] for line in out.splitlines()]
        assert types[0] == "run.created" and types[-1] == "run.completed"
    finally:
        follower.kill()
        stop(worker)
    done = json.loads(cli("ls", "--json", env=env).stdout)
    assert done[0]["status"] == "completed"
    text = cli("events", run_id, env=env).stdout
    assert "run.completed" in text and "All done." in text


def test_cancel_queued_and_running(tmp_path: Path, db_url: str) -> None:
    env = env_for(db_url)
    slow = write_agent(tmp_path / "slow.yaml", [{"text": "never", "delay": 60}])
    queued_id = cli("start", str(slow), "--input", "x", env=env).stdout.strip()
    result = cli("cancel", queued_id, env=env)
    assert result.returncode == 0 and "cancelled" in result.stdout
    assert json.loads(cli("status", queued_id, "--json", env=env).stdout)["status"] == "cancelled"

    running_id = cli("start", str(slow), "--input", "x", env=env).stdout.strip()
    worker = start_worker(env, "--lease-ttl", "1", "--poll-interval", "0.1")
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            events = cli("events", running_id, "--json", env=env).stdout
            if '"llm.started"' in events:
                break
            time.sleep(0.2)
        t0 = time.monotonic()
        result = cli("cancel", running_id, env=env)
        assert result.returncode == 0, result.stderr
        assert time.monotonic() - t0 < 15  # the 60 s LLM call was interrupted
        status = json.loads(cli("status", running_id, "--json", env=env).stdout)
        assert status["status"] == "cancelled"
        types = [
            json.loads(x)["type"]
            for x in cli("events", running_id, "--json", env=env).stdout.splitlines()
        ]
        assert types[-1] == "run.cancelled"
        assert "llm.completed" not in types
    finally:
        stop(worker)
