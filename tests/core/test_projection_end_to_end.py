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
        # One transaction per durable step: an append now may carry what used to be two
        # (a completion with the next start). After each one, the row must be the row the
        # old code left after its append that ended at the same event.
        old_after = {a["events"][-1]["seq"]: a["after"] for a in then["appends"]}
        for new in now["appends"]:
            last = new["events"][-1]
            where = f"{name} seq {last['seq']} {last['type']}"
            assert last["seq"] in old_after, f"{where}: no append of the old code ended here"
            old = old_after[last["seq"]]
            for column in PER_APPEND:
                if column != "progress_seq":
                    assert new["after"][column] == old[column], f"{where}: {column}"
            # progress_seq marks the last commit that finished something; a batch that ends
            # on a start (`tool.started` after `llm.completed`) marks its last seq, so it can
            # be a little ahead. What it is for, crash-loop protection, compares it with
            # claim_seq: that must agree.
            got, want = new["after"]["progress_seq"], old["progress_seq"]
            assert want <= got <= last["seq"], f"{where}: progress_seq"
            claim = new["after"]["claim_seq"]
            assert (got > claim) == (want > old["claim_seq"]), f"{where}: progress vs claim"
            assert (new["after"]["lease_owner"] is None) == (old["lease_owner"] is None)
            assert (new["after"]["wake_at"] is None) == (old["wake_at"] is None), where
        old = then["appends"][-1]
        for column in FINAL:
            assert now["appends"][-1]["after"][column] == pytest.approx(old["after"][column])
