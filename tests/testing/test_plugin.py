"""The pytest plugin on its own examples, as a user runs it: `pytest` in a subprocess.

examples/shop_crash_example.py crash-tests three charge tools declared idempotent
against a fake bank (examples/shop.py). Two are broken (one charges again on
every attempt, one makes up its own idempotency key); the plugin must fail both
with a message naming the tool, the boundary and the duplicated charge, and pass
the one that passes `ctx.idempotency_key` to the bank.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent / "examples"

pytestmark = pytest.mark.timeout(1000)


def run_pytest(
    tmp: Path, *args: str, example: str | None = None
) -> subprocess.CompletedProcess[str]:
    """pytest in a fresh directory, outside this project's configuration, on a copy of an
    example test file (the example's tool modules are importable, as in a user's project)."""
    (tmp / "pytest.ini").write_text("[pytest]\n")
    if example is not None:
        shutil.copy(EXAMPLES / example, tmp / f"test_{example}")
        args = (*args, f"test_{example}")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(EXAMPLES), env.get("PYTHONPATH", "")])
    env["SHOP_BANK"] = str(tmp / "bank.jsonl")
    env.pop("EVERRUNS_TESTING_DB", None)
    command = [sys.executable, "-m", "pytest", "-c", str(tmp / "pytest.ini"), "--rootdir", str(tmp)]
    return subprocess.run(
        [*command, "-p", "no:cacheprovider", "-o", "timeout=900", "-rA", *args],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=1000,
    )


def test_plugin_is_registered(tmp_path: Path) -> None:
    result = run_pytest(tmp_path, "--fixtures")
    assert result.returncode == 0, result.stdout + result.stderr
    for fixture in ("crash_matrix", "everruns_db", "record_run", "replay_run"):
        assert re.search(rf"^{fixture}\b", result.stdout, re.M), result.stdout[-3000:]


def test_broken_tools_fail_and_the_keyed_tool_passes(tmp_path: Path) -> None:
    result = run_pytest(tmp_path, example="shop_crash_example.py")
    out = result.stdout
    sys.stdout.write(out)  # the plugin's reports, for the record (-s shows them)
    assert result.returncode == 1, out + result.stderr
    assert re.search(r"PASSED .*test_charge_survives_crashes\[charge_keyed\]", out), out
    assert re.search(r"FAILED .*test_charge_survives_crashes\[charge_naive\]", out), out
    assert re.search(r"FAILED .*test_charge_survives_crashes\[charge_random_key\]", out), out
    duplicated = "duplicated effect 'charge 10 EUR to card-1' happened 2 times (attempts 1, 2)"
    # Each broken tool is named, at the boundaries where its charge was repeated.
    for tool in ("charge_naive", "charge_random_key"):
        for boundary in ("mid:tool#1", "before:tool.completed#1"):
            line = f"- {boundary}: tool '{tool}' (declared idempotent), call call_1_1: {duplicated}"
            assert line in out, f"missing: {line}\n{out}"
    assert (
        "'charge_random_key' (declared idempotent), call call_1_1: ignores the idempotency key"
        in out
    )
    # The keyed tool's report: every boundary ok, the repeated call did not charge twice.
    keyed = out.split("crash matrix of agent 'shop-charge-keyed'")[1]
    # Its report ends at a blank line or where pytest's summary begins (whichever first).
    keyed = keyed.split("\n\n")[0].split("\n=")[0]
    assert "VIOLATION" not in keyed and "mid:tool#1" in keyed, keyed
    assert "ok (repeated charge_keyed (call_1_1))" in keyed, keyed
    bank = (tmp_path / "bank.jsonl").read_text().splitlines()
    assert bank, "the example tools never charged"


def test_the_documented_example_passes(tmp_path: Path) -> None:
    """docs/testing.md's travel agent: the full crash matrix and the replay test pass,
    and the interrupted payment is reported as "outcome unknown", never repeated."""
    result = run_pytest(tmp_path, "-s", example="travel_test_example.py")
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "2 passed" in out, out
    table = out.split("crash matrix of agent 'travel'")[1].split("\n\n")[0]
    assert "0 with violations" in table, table
    assert "mid:tool#2               ok (outcome unknown: pay)" in table, table
    assert "before:tool.started#2    ok" in table, table
    assert "first divergence at step 1: the system prompt differs" in out, out
