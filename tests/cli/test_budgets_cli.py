"""The budget commands: `budget` raises a run's limits and `resume` continues it; an
unpriced model is warned about, rejected under `max_cost_usd`, and its cost shown as
"unknown" (issue 11)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml

from everruns.core.events import TERMINAL_STATUSES
from helpers import cli, env_for, start_worker, stop, write_agent

NOTES = [{"tool_calls": [{"name": "note", "arguments": {"text": f"n{k}"}}]} for k in range(3)]


def test_budget_and_resume_commands(tmp_path: Path, sqlite_url: str) -> None:
    env = env_for(sqlite_url)
    spec = write_agent(
        tmp_path / "a.yaml",
        [*NOTES, {"text": "all done"}],
        [{"builtin": "notes"}],
        limits={"max_steps": 1},
    )
    run = cli("run", str(spec), "--input", "go", "--json", env=env)
    assert run.returncode == 1
    run_id = json.loads(run.stdout.splitlines()[0])["run_id"]
    refused = cli("resume", run_id, env=env)
    assert refused.returncode != 0 and "everruns budget" in refused.stderr
    bad = cli("budget", run_id, "--deadline", "soon", env=env)
    assert bad.returncode == 2 and "deadline" in bad.stderr
    raised = cli("budget", run_id, "--max-steps", "9", env=env)
    assert raised.returncode == 0, raised.stderr
    assert "max_steps 1 → 9" in raised.stdout and f"everruns resume {run_id}" in raised.stdout
    resumed = cli("resume", run_id, env=env)
    assert resumed.returncode == 0 and "queued" in resumed.stdout
    worker = start_worker(env, "--lease-ttl", "2", "--poll-interval", "0.1")
    try:
        deadline = time.monotonic() + 30
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            status = json.loads(cli("status", run_id, "--json", env=env).stdout)
            if status["status"] in TERMINAL_STATUSES:
                break
            time.sleep(0.2)
    finally:
        stop(worker)
    assert status["status"] == "completed" and status["limits"] == {"max_steps": 9}
    assert set(status["usage"]) >= {"input_tokens", "output_tokens", "cost_usd", "cost_known"}
    assert status["tree_usage"] == status["usage"]  # no sub-agents
    events = cli("events", run_id, env=env).stdout
    assert "limits.changed" in events and "max_steps 1 → 9" in events


def test_unpriced_model_is_warned_rejected_and_unknown(tmp_path: Path, sqlite_url: str) -> None:
    env = env_for(sqlite_url)
    model = {"provider": "openai-compatible", "name": "llama", "base_url": "http://127.0.0.1:9/v1"}
    path = tmp_path / "local.yaml"

    def write(**limits: Any) -> str:
        path.write_text(yaml.safe_dump({"name": "local", "model": model, "limits": limits}))
        return str(path)

    ok = cli("validate", write(), env=env)
    assert ok.returncode == 0, ok.stderr
    assert "openai-compatible:llama has no price" in ok.stderr
    assert "model.pricing: {input_per_mtok" in ok.stderr  # how to add one
    rejected = cli("validate", write(max_cost_usd=1), env=env)
    assert rejected.returncode != 0
    assert "max_cost_usd=1 cannot be enforced" in rejected.stderr + rejected.stdout
    assert "limits.unpriced: allow" in rejected.stderr + rejected.stdout
    allowed = cli("validate", write(max_cost_usd=1, unpriced="allow"), env=env)
    assert allowed.returncode == 0 and "has no price" in allowed.stderr
    model["pricing"] = {"input_per_mtok": 1, "output_per_mtok": 2}
    priced = cli("validate", write(max_cost_usd=1), env=env)
    assert priced.returncode == 0 and "no price" not in priced.stderr


def test_unknown_cost_is_printed_as_unknown_never_zero() -> None:
    from rich.console import Console

    from everruns.cli.views import RunView, runs_table, status_table, totals_line

    own = {"input_tokens": 5, "output_tokens": 5, "total_tokens": 10, "cost_usd": 0.02}
    tree = {"input_tokens": 9, "output_tokens": 9, "total_tokens": 18, "cost_usd": None}
    run = RunView.model_validate(
        {
            "id": "run_1",
            "agent": "a",
            "agent_version": 1,
            "status": "completed",
            "usage": {**own, "cost_known": True},
            "tree_usage": {**tree, "cost_known": False},
        }
    )
    console = Console(width=200, record=True)
    console.print(status_table(run))
    console.print(runs_table([run]))
    text = console.export_text()
    assert "$0.0200" in text and "unknown" in text and "$0.0000" not in text
    assert "tree usage" in text and "with its sub-agents" in text
    unpriced = run.model_copy(update={"usage": run.tree_usage})
    line = totals_line([run, unpriced])
    assert line.startswith("total: 2 runs, 28 tokens, $0.0200 + unknown")
