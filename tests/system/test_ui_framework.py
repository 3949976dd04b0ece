"""The web UI shows a framework run like a native one, in a real browser (Chromium through
Playwright) against a real `everruns server` with its embedded worker (token deltas are
in-process, so they reach the browser only from an embedded worker).

The run: a Pydantic AI agent (tests/tooling/pai_booker.py) started by reference
through the API, its OpenAI chat model sent to a loopback fake server that streams: an
answer with text and a weather call (idempotent), a hotel booking by a tool declared
`requires_approval=True` (Pydantic AI's own approval, parked by everruns), approved in
the browser, then the final answer. Fixtures (`browser`, `page`, `Server`) come from
test_ui.py.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Page, expect
from test_ui import Server, _events_of, _shot, browser, page  # noqa: F401  (fixtures)

from helpers import FakeOpenAI, env_for

pytestmark = pytest.mark.timeout(120)

SPEC = {
    "name": "hotel-booker",
    "agent": {"python": "pai_booker:booker", "framework": "pydantic_ai"},
}
# The operator lets API specs name agents of this module (docs/security.md).
SETTINGS = "api_specs:\n  allow_tools: [python]\n  python_modules: [pai_booker]\n"
THINKING = "Let me check the weather in Lisbon before I book anything for you."
FINAL = "Booked **2 nights** in Lisbon; it will be sunny."


def answer(body: dict[str, Any]) -> dict[str, Any]:
    results = [m["content"] for m in body["messages"] if m["role"] == "tool"]
    if not results:
        call = {"id": "call_w", "name": "weather", "arguments": {"city": "Lisbon"}}
        return {"content": THINKING, "tool_calls": [call]}
    if len(results) == 1:
        call = {"id": "call_b", "name": "book", "arguments": {"city": "Lisbon", "nights": 2}}
        return {"tool_calls": [call]}
    return {"content": FINAL}


class Deployment:
    def __init__(self, server: Server, gates: tuple[threading.Event, threading.Event]):
        self.server = server
        self.gates = gates


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    # The first answer's first word waits for gates[0], its other words for gates[1].
    gates = (threading.Event(), threading.Event())
    fake = FakeOpenAI(answer, usage=(1000, 100), gates=gates)
    cwd = tmp_path_factory.mktemp("framework-ui")
    (cwd / "settings.yaml").write_text(SETTINGS)
    env = env_for(
        f"sqlite:///{cwd / 'everruns.db'}",
        PAI_OPENAI_URL=fake.url,
        EVERRUNS_SETTINGS=str(cwd / "settings.yaml"),
    )
    server = Server(env, cwd, ())
    try:
        server.start()
        yield Deployment(server, gates)
    finally:
        for gate in gates:
            gate.set()
        server.kill()
        fake.close()


def test_framework_run_streams_shows_its_timeline_and_approves(
    deployment: Deployment,
    page: Page,  # noqa: F811  (the fixture imported from test_ui)
) -> None:
    solo = deployment.server
    run_id = str(solo.api("POST", "/v1/runs", {"spec": SPEC, "input": "Book Lisbon"})["id"])
    page.goto(f"{solo.url}/#/runs/{run_id}")
    expect(page.locator('[data-type="llm.started"]')).to_have_count(1)  # live, subscribed
    expect(page.locator('[data-type="run.started"]')).to_contain_text("· Pydantic AI agent")
    deployment.gates[0].set()

    # The first words stream in from llm.delta while the model request is in flight.
    snapshot = page.wait_for_function(
        """() => {
            const t = document.getElementById('stream-text');
            if (!t || !t.textContent) return null;
            return {text: t.textContent,
                    completed: document.querySelectorAll('[data-type="llm.completed"]').length};
        }""",
        polling="raf",
        timeout=15_000,
    ).json_value()
    assert snapshot == {"text": "Let", "completed": 0}
    deployment.gates[1].set()

    # The answer, journaled whole, with its tool call; the tools with their effect classes.
    first = page.locator('[data-type="llm.completed"]').first
    expect(first).to_contain_text(THINKING)
    expect(first).to_contain_text('"city": "Lisbon"')
    expect(first).to_contain_text("1,000 in / 100 out tokens")
    expect(page.locator("#stream")).to_have_count(0)
    expect(page.locator('[data-type="tool.started"]').first).to_contain_text(
        "Tool weather started · attempt 1 · idempotent"
    )
    expect(page.locator('[data-type="tool.completed"]').first).to_contain_text("sunny")

    # Pydantic AI's requires_approval tool: the run parks, the bar asks, the browser approves.
    expect(page.locator("#run-status")).to_have_text("waiting")
    expect(page.locator('[data-type="approval.requested"]')).to_contain_text(
        "Approval needed: book"
    )
    box = page.locator("#pending-approvals")
    expect(box).to_contain_text("Approve book?")
    box.get_by_role("button", name="Approve").click()
    expect(page.locator('[data-type="approval.granted"]')).to_have_count(1)
    expect(page.locator("#pending-approvals")).to_be_hidden()
    expect(page.locator('[data-type="tool.started"]').nth(1)).to_contain_text(
        "Tool book started · attempt 1 · at_most_once"
    )
    expect(page.locator('[data-type="tool.completed"]').nth(1)).to_contain_text(
        "booked 2 nights in Lisbon"
    )
    expect(page.locator("#run-status")).to_have_text("completed", timeout=20_000)
    result = page.locator("#result-body")
    expect(result).to_contain_text("Booked 2 nights in Lisbon; it will be sunny.")
    expect(result.locator("strong")).to_have_text("2 nights")

    # Like a native run: three model requests (the first answer replayed after the approval,
    # not asked again), usage, every event once and in order.
    expect(page.locator('[data-type="llm.completed"]')).to_have_count(3)
    expect(page.locator("#stat-steps")).to_have_text("3")
    expect(page.locator("#stat-tokens")).to_have_text("3,300")
    expect(page.locator("#stat-cost")).to_have_text("$0.0084")  # openai:gpt-4.1 prices
    expect(page.locator("#budget-own")).to_have_text("$0.0084 · 3,300 tokens")
    events = _events_of(page)
    assert [seq for seq, _ in events] == list(range(1, len(events) + 1))
    assert solo.api("GET", f"/v1/runs/{run_id}")["last_seq"] == len(events)
    _shot(page, "ui-framework-run.png")
