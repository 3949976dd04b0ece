"""The README's quickstart, followed literally: the commands it prints after `make demo`
run as printed, in a fresh `git clone`, from the clone's root, with no PYTHONPATH and no
EVERRUNS_DATABASE_URL. The clone's `.venv` is this test's virtualenv (a symlink), so the
walkthrough does not reinstall anything; `make demo` itself is tests/system/test_demo.py."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(sys.executable).parent.parent


def quickstart_commands(readme: str) -> list[str]:
    """The lines of the first code block after `make demo` in the Quickstart section."""
    section = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```\n(.*?)```", section, re.S)
    after_demo = [b for b in blocks if "make demo" not in b]
    assert after_demo, "the Quickstart shows no commands after `make demo`"
    return [line for line in after_demo[0].splitlines() if line.strip()]


@pytest.mark.timeout(180)
def test_the_quickstart_runs_as_printed_in_a_fresh_clone(tmp_path: Path) -> None:
    if not (VENV / "bin" / "activate").exists():
        pytest.fail(f"the tests must run from a virtualenv (make install), not {sys.executable}")
    clone = tmp_path / "everruns"
    subprocess.run(
        ["git", "clone", "-q", "--depth", "1", f"file://{ROOT}", str(clone)],
        check=True,
        timeout=60,
    )
    (clone / ".venv").symlink_to(VENV)
    commands = quickstart_commands((clone / "README.md").read_text())
    assert commands[0].startswith(". .venv/bin/activate"), commands
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVERRUNS_")}
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    env["PATH"] = "/usr/local/bin:/usr/bin:/bin"  # `everruns` is on PATH only once activated
    env["RESEARCH_OUTPUT_DIR"] = str(tmp_path / "output")
    script = "set -eu\n" + "".join(f"echo '$ {c}'\n{c}\n" for c in commands)
    done = subprocess.run(
        ["bash", "-c", script],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Traceback" not in output, output
    assert re.search(r"^everruns \d", done.stdout, re.M), output
    assert "ok: agent researcher" in done.stdout, output
    run_id = re.search(r"^run (run_\w+) \(agent researcher v1\)$", done.stdout, re.M)
    assert run_id, output
    assert re.search(rf"^run {run_id[1]} completed: \d+ steps", done.stdout, re.M), output
    assert "result: " in done.stdout, output
    assert done.stdout.count(run_id[1]) >= 3, output  # the header, the summary and `ls`
    assert (clone / ".everruns" / "everruns.db").is_file()
