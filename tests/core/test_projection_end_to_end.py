"""The same scenarios as the golden fixture, run now on the real store and worker.

tests/core/record_golden.py runs the twelve scenarios in a subprocess (it patches the
journal's append to record rows) on a fresh SQLite file; every append must leave the
row the pre-projection code left, and every run must end with the same totals.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(600)  # the recording runs twelve scenarios (seconds when idle)

HERE = Path(__file__).parent
GOLDEN = json.loads((HERE / "fixtures" / "projection_golden.json").read_text())["scenarios"]
PER_APPEND = (
    "status",
    "last_seq",
    "progress_seq",
    "claim_seq",
    "result",
    "error",
    "cancel_requested",
    "pause_requested",
)
FINAL = ("steps", "input_tokens", "output_tokens", "cost_usd")


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("golden") / "now.json"
    env = {**os.environ, "EVERRUNS_GOLDEN_OUT": str(out)}
    result = subprocess.run(
        [sys.executable, str(HERE / "record_golden.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=500,
    )
    assert result.returncode == 0, result.stderr
    return dict(json.loads(out.read_text())["scenarios"])


def _runs(scenario: dict[str, Any]) -> list[dict[str, Any]]:
    return list(scenario["runs"].values())


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_rows_match_the_recording(name: str, recorded: dict[str, Any]) -> None:
    for then, now in zip(_runs(GOLDEN[name]), _runs(recorded[name]), strict=True):
        assert [e["type"] for e in now["events"]] == [e["type"] for e in then["events"]]
        assert len(now["appends"]) == len(then["appends"])
        for old, new in zip(then["appends"], now["appends"], strict=True):
            where = f"{name} seq {new['events'][0]['seq']} {new['events'][0]['type']}"
            for column in PER_APPEND:
                assert new["after"][column] == old["after"][column], f"{where}: {column}"
            assert (new["after"]["lease_owner"] is None) == (old["after"]["lease_owner"] is None)
            assert (new["after"]["wake_at"] is None) == (old["after"]["wake_at"] is None), where
        for column in FINAL:
            assert new["after"][column] == pytest.approx(old["after"][column]), column
