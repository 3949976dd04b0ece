"""Record and replay: a recorded 10-step run replays with no live call; a changed
system prompt or tool description diverges, and the report says where and why."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from everruns.testing import journalfile
from everruns.testing.replay import record, replay

EXAMPLES = Path(__file__).parent / "examples"
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def examples_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLES))


def agent(**changes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": "counter",
        "system_prompt": "You count.",
        "model": {"provider": "python", "function": "counting:respond"},
        "tools": ["counting:count"],
    }
    spec.update(changes)
    return spec


@pytest.fixture
def recording(tmp_path: Path) -> Path:
    path = record(agent(), "count to 9", tmp_path / "run.jsonl", tmp=tmp_path / "rec")
    rec = journalfile.read(path)
    assert rec.state.status == "completed" and rec.state.steps == 10
    return path


def test_unchanged_agent_replays_without_live_calls(recording: Path, tmp_path: Path) -> None:
    report = replay(recording, agent(), tmp=tmp_path / "replay")
    assert report.status == "completed", report.format()
    assert (report.replayed_calls, report.live_calls) == (10, 0)
    assert report.divergence is None
    assert (report.tools_replayed, report.tools_executed) == (9, 0)
    assert report.same, report.diff
    assert "transcripts identical" in report.diff

    executed = replay(recording, agent(), tools={"count": "execute"}, tmp=tmp_path / "exec")
    assert (executed.tools_replayed, executed.tools_executed) == (0, 9)
    assert executed.same and executed.live_calls == 0


def test_changed_system_prompt_diverges_at_step_1(recording: Path, tmp_path: Path) -> None:
    changed = agent(system_prompt="You count carefully.")
    report = replay(recording, changed, tmp=tmp_path / "replay")
    assert report.divergence is not None
    assert report.divergence.step == 1
    assert report.divergence.detail == (
        "the system prompt differs: 'You count.' -> 'You count carefully.'"
    )
    assert report.status == "failed" and report.live_calls == 0  # no live model configured
    assert "first divergence at step 1: the system prompt differs" in report.format()

    # With a live model, the run goes on there; the diff shows what changed.
    live = {"provider": "python", "function": "counting:respond_short"}
    report = replay(recording, changed, live=live, tmp=tmp_path / "live")
    assert report.status == "completed"
    assert (report.replayed_calls, report.live_calls) == (0, 4)
    assert not report.same
    assert "≠ steps: 10 | 4" in report.diff
    assert "≠ result: counted to 9 | counted to 3" in report.diff
    assert '-tool call call_4_1: count({"n": 4})' in report.diff
    assert "+assistant: counted to 3" in report.diff


def test_changed_tool_description_diverges_at_the_tool(recording: Path, tmp_path: Path) -> None:
    report = replay(recording, agent(tools=["counting:count_loudly"]), tmp=tmp_path / "r")
    assert report.divergence is not None and report.divergence.step == 1
    assert report.divergence.detail == (
        "tool 'count': the description differs: 'Say a number.' -> 'Say a number out loud.'"
    )
    # The spec's own model, live: the same answers, so the transcript is unchanged.
    report = replay(
        recording, agent(tools=["counting:count_loudly"]), live=True, tmp=tmp_path / "l"
    )
    assert report.live_calls == 10 and report.same, report.diff


def test_changed_tool_result_diverges_where_the_model_sees_it(
    recording: Path, tmp_path: Path
) -> None:
    """Executing a tool whose output changed: the first request that carries the new
    result (step 2) diverges; step 1 is still served from the recording."""
    text = recording.read_text().replace('"counted 1"', '"counted one"')
    edited = tmp_path / "edited.jsonl"
    edited.write_text(text)
    report = replay(edited, agent(), tools={"count": "execute"}, tmp=tmp_path / "r")
    assert report.divergence is not None and report.divergence.step == 2, report.format()
    assert "message 3 differs" in report.divergence.detail
    assert "counted one" in report.divergence.detail and "counted 1" in report.divergence.detail
    assert report.replayed_calls == 1


def test_bad_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"hello": 1}\n')
    with pytest.raises(journalfile.JournalFileError, match="not an everruns journal export"):
        replay(bad)


async def test_import_keeps_a_failed_run_and_its_error(tmp_path: Path, db_url: str) -> None:
    from everruns.store import Store
    from everruns.testing.replay import arecord

    failing = {"name": "broken", "model": {"provider": "python", "function": "pricing:broken"}}
    path = await arecord(failing, "hi", tmp_path / "failed.jsonl", tmp=tmp_path / "rec")
    recording = journalfile.read(path)
    assert recording.state.status == "failed"
    store = await Store.open(db_url)
    try:
        run_id = await journalfile.import_run(store, recording)
        row = await store.get_run(run_id)
        assert row.status == "failed" and row.agent_name == "broken"
        assert row.error is not None and row.error["reason"] == "llm_error"
        assert "pricing:broken raised TypeError" in row.error["message"]
        assert [e.to_dict() for e in await store.load_events(run_id)][1:] == [
            e.to_dict() for e in recording.events
        ][1:]
        again = journalfile.parse(await journalfile.export_run(store, run_id))
        assert again.run["id"] == run_id and len(again.events) == len(recording.events)
    finally:
        await store.close()
