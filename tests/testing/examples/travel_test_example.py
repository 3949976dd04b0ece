"""The tests of docs/testing.md, verbatim (run by tests/testing/test_plugin.py)."""

from everruns.testing import assert_exactly_once

AGENT = {
    "name": "travel",
    "system_prompt": "You book flights.",
    "model": {"provider": "python", "function": "travel:respond"},
    "tools": ["travel:search_flights", "travel:pay"],
}


def test_travel_agent_survives_every_crash(crash_matrix):
    report = crash_matrix(AGENT, "book a flight to LIS")
    print(report)
    assert_exactly_once(report)


def test_prompt_change_keeps_the_booking(record_run, replay_run):
    recording = record_run(AGENT, "book a flight to LIS")
    changed = {**AGENT, "system_prompt": "You book the cheapest flight."}
    report = replay_run(recording, changed, live=True)
    print(report)
    assert report.divergence.step == 1  # the new prompt: every call is live
    assert report.transcript[-1]["content"] == "booked: paid 95 EUR for FR456"
    assert report.tools_replayed == 2  # no real payment in a replay
