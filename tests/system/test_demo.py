"""`make demo` works: a worker is SIGKILLed mid-run and another one finishes the run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "demo.py"


def test_demo_survives_sigkill(tmp_path: Path) -> None:
    env = dict(os.environ)
    env.pop("EVERRUNS_DATABASE_URL", None)
    env.pop("EVERRUNS_CRASH_AT", None)
    env["RESEARCH_OUTPUT_DIR"] = str(tmp_path / "output")  # keep examples/output/ untouched
    proc = subprocess.run(
        [sys.executable, str(DEMO), "--db", str(tmp_path / "demo.db")],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "killed worker-1" in output and "SIGKILL" in output, output
    assert "TAKEOVER" in output, output
    assert "the run completed" in output, output
    assert "demo passed" in output, output
    assert "FAILED" not in output, output
    report = tmp_path / "output" / "durable-execution-in-brief.md"
    assert report.read_text().startswith("# Durable execution in brief\n")
