"""The testing commands from the command line: test crash, export, import, replay, diff.

The round trip runs on SQLite and PostgreSQL; so does a crash matrix, with every
case sharing the one PostgreSQL database.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from everruns.testing import assert_exactly_once, crash_matrix

EXAMPLES = Path(__file__).parent / "examples"
pytestmark = pytest.mark.timeout(300)


def everruns(tmp: Path, db: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "EVERRUNS_DATABASE_URL": db,
        "PYTHONPATH": str(EXAMPLES),
        "SHOP_BANK": str(tmp / "bank.jsonl"),
    }
    return subprocess.run(
        [sys.executable, "-m", "everruns.cli", *args],
        env=env,
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=240,
    )


def write(path: Path, spec: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(spec))
    return path


def shop(tool: str) -> dict[str, Any]:
    return {
        "name": f"shop-{tool.replace('_', '-')}",
        "model": {"provider": "python", "function": "shop:respond"},
        "tools": [f"shop:{tool}"],
    }


def counter(prompt: str = "You count.") -> dict[str, Any]:
    return {
        "name": "counter",
        "system_prompt": prompt,
        "model": {"provider": "python", "function": "counting:respond"},
        "tools": ["counting:count"],
    }


def test_test_crash_table_and_exit_code(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'unused.db'}"
    naive = write(tmp_path / "naive.yaml", shop("charge_naive"))
    bad = everruns(tmp_path, db, "test", "crash", str(naive), "-i", "pay", "--only", "mid:tool")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "mid:tool#1" in bad.stdout and "VIOLATION" in bad.stdout
    assert (
        "- mid:tool#1: tool 'charge_naive' (declared idempotent), call call_1_1: duplicated "
        "effect 'charge 10 EUR to card-1' happened 2 times (attempts 1, 2)"
    ) in bad.stdout
    assert "2 boundaries, 2 with violations" in bad.stdout

    keyed = write(tmp_path / "keyed.yaml", shop("charge_keyed"))
    good = everruns(tmp_path, db, "test", "crash", str(keyed), "-i", "pay", "--only", "mid:tool")
    assert good.returncode == 0, good.stdout + good.stderr
    assert "2 boundaries, 0 with violations" in good.stdout

    missing = everruns(tmp_path, db, "test", "crash", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "file not found" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_export_import_diff_replay(tmp_path: Path, db_url: str) -> None:
    spec = write(tmp_path / "counter.yaml", counter())
    ran = everruns(tmp_path, db_url, "run", str(spec), "-i", "count to 9")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    runs = json.loads(everruns(tmp_path, db_url, "ls", "--json").stdout)
    run_id = runs[0]["id"]

    exported = everruns(tmp_path, db_url, "export", run_id)
    assert exported.returncode == 0, exported.stderr
    recording = tmp_path / "run.jsonl"
    recording.write_text(exported.stdout)
    header = json.loads(exported.stdout.splitlines()[0])
    assert header["run"]["id"] == run_id and header["tools"][0]["name"] == "count"

    imported = everruns(tmp_path, db_url, "import", str(recording))
    assert imported.returncode == 0, imported.stderr
    copy = imported.stdout.strip()
    assert copy.startswith("run_") and copy != run_id
    status = json.loads(everruns(tmp_path, db_url, "status", copy, "--json").stdout)
    assert status["status"] == "completed" and status["result"] == "counted to 9"

    same = everruns(tmp_path, db_url, "diff", run_id, copy)
    assert same.returncode == 0, same.stdout + same.stderr
    assert "identical" in same.stdout

    replayed = everruns(tmp_path, db_url, "replay", str(recording), "--spec", str(spec))
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert "10 LLM calls served from the recording, 0 live" in replayed.stdout

    changed = write(tmp_path / "changed.yaml", counter("You count slowly."))
    diverged = everruns(tmp_path, db_url, "replay", str(recording), "--spec", str(changed))
    assert diverged.returncode == 1
    assert "first divergence at step 1: the system prompt differs" in diverged.stdout
    live = everruns(tmp_path, db_url, "replay", str(recording), "--spec", str(changed), "--live")
    # The same python model answers live: the same transcript, a longer (costlier) prompt.
    assert live.returncode == 1, live.stdout
    assert "0 LLM calls served from the recording, 10 live" in live.stdout
    assert "transcripts identical" in live.stdout and "≠ input_tokens: 148 | 165" in live.stdout

    nothing = everruns(tmp_path, db_url, "diff", run_id, "run_doesnotexist")
    assert nothing.returncode == 1 and "run_doesnotexist" in nothing.stderr
    junk = tmp_path / "junk.jsonl"
    junk.write_text("not json\n")
    bad = everruns(tmp_path, db_url, "import", str(junk))
    assert bad.returncode == 2 and "line 1: not JSON" in bad.stderr
    assert "Traceback" not in bad.stderr + nothing.stderr


@pytest.mark.postgres
def test_crash_matrix_on_postgres(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHOP_BANK", str(tmp_path / "bank.jsonl"))
    monkeypatch.syspath_prepend(str(EXAMPLES))
    report = crash_matrix(
        shop("charge_keyed"), "pay", db=pg_url, only=["tool.completed"], tmp=tmp_path
    )
    assert [c.point for c in report.cases] == [
        "before:tool.completed#1",
        "after:tool.completed#1",
    ]
    assert all(c.reached for c in report.cases)
    assert_exactly_once(report)
