"""The web UI in a real browser: Debian's chromium driven by Playwright, against real
`everruns server` and `everruns worker` processes on loopback.

Two deployments share this module: a fleet (`everruns server --no-worker` plus a separate
`everruns worker --lease-ttl 1` that the takeover test SIGKILLs and replaces, and an
`--auth` API server on the same database), and a single server with its embedded worker.
Token deltas are ephemeral and in-process (engine/broker.py), so the live-streaming test
runs against the embedded worker: a separate worker's deltas never reach the API server.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
import pytest
import yaml
from playwright.sync_api import BrowserContext, Page, expect, sync_playwright

from helpers import env_for, read_ledger, stop

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
WORKER_ARGS = ("--lease-ttl", "1", "--poll-interval", "0.1")
PRICING = {"input": 3.0, "output": 15.0}
USAGE_1K = {"input_tokens": 1000, "output_tokens": 1000}  # $0.018 at PRICING

THINKING = (
    "Let me check the ledger before I change anything. I will record invoice 42 so the "
    "books stay balanced, then tell you exactly what changed and what to watch next week."
)
REPORT = """# Ledger report

**Recorded**: invoice `invoice-42` for *Acme Corp*.

- balance checked
- entry written once, with an idempotency key

1. Review the entry
2. Close the month

See [the runbook](https://example.com/runbook). Raw HTML stays text: <b>not bold</b>"""
FOLLOW_UP = (
    "Nothing else changed. <img src=x onerror=window.__xss=1>"
    "<script>window.__xss=1</script> [click](javascript:window.__xss=1)"
)


def _agent(name: str, responses: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    return {
        "name": name,
        "model": {"provider": "scripted", "responses": responses, "pricing": PRICING},
        **fields,
    }


WRITER = _agent(
    "ledger-writer",
    [
        {
            "text": THINKING,
            "tool_calls": [{"name": "amo_record", "arguments": {"key": "invoice-42"}}],
            "delay": 2.4,
            "usage": {"input_tokens": 1250, "output_tokens": 96},
        },
        {"text": REPORT, "delay": 1.2, "usage": {"input_tokens": 1420, "output_tokens": 180}},
        {"text": FOLLOW_UP, "delay": 0.3, "usage": {"input_tokens": 1700, "output_tokens": 20}},
    ],
    tools=["ledgertools:amo_record"],
    approvals={"require_for": ["amo_record"]},
)
SLOW = _agent("slow-llm", [{"text": "survived the takeover", "delay": 3}])
SLEEPER = _agent("sleeper", [{"text": "never shown", "delay": 60}])
QUICK = _agent("quick", [{"text": "quick answer", "delay": 0.4}])
STEPPER = _agent(
    "stepper",
    [
        {"tool_calls": [{"name": "idem_record", "arguments": {"key": "s1", "sleep": 1.5}}]},
        {"tool_calls": [{"name": "idem_record", "arguments": {"key": "s2", "sleep": 1.5}}]},
        {"text": "stepped twice", "delay": 0.3},
    ],
    tools=["ledgertools:idem_record"],
)
GATED = _agent(
    "gated",
    [
        {"tool_calls": [{"name": "amo_record", "arguments": {"key": "gate-1"}}]},
        {"text": "understood, not recorded"},
    ],
    tools=["ledgertools:amo_record"],
    approvals={"require_for": ["amo_record"]},
)


def _child(doc: str, delay: float) -> dict[str, Any]:
    return _agent("doc-reader", [{"text": f"summary of {doc}", "delay": delay}])


# A parent that fans out to three sub-agents (each a run of its own) and waits for them.
TREE = _agent(
    "reviewer",
    [
        {
            "text": "Three documents, one sub-agent each.",
            "tool_calls": [
                {
                    "name": "spawn_agent",
                    "arguments": {"input": f"Summarize {doc}", "spec": _child(doc, delay)},
                }
                for doc, delay in (("journaling", 1.5), ("leases", 2.5), ("idempotency", 3.5))
            ],
        },
        {"tool_calls": [{"name": "wait_agents", "arguments": {"mode": "all"}}]},
        {"text": "All three summaries merged."},
    ],
    tools=[{"builtin": "subagents"}],
)
SHELL_FAIL = _agent(
    "shell-fail",
    [
        {"tool_calls": [{"name": "shell", "arguments": {"command": "echo missing >&2; exit 3"}}]},
        {"text": "The command failed; nothing was changed."},
    ],
    tools=[{"builtin": "shell"}],
)
FOLLOWED = _agent(
    "many-steps",
    [
        {"tool_calls": [{"name": "idem_record", "arguments": {"key": f"f{i}", "sleep": 0.6}}]}
        for i in range(12)
    ]
    + [{"text": "twelve steps done"}],
    tools=["ledgertools:idem_record"],
)
# The operator policy of the UI test server: API specs may also use the shell tool,
# unconfined (the test machine need not have bubblewrap).
UI_SETTINGS = """\
api_specs:
  allow_tools: [python, shell]
  python_modules: [ledgertools, wstools]
sandbox: none
"""
# A spec typed in the browser, with a typo in a field name.
TYPO_YAML = """\
name: notetaker
system_prompt: Remember what you learn.
model:
  provider: scripted
  responses:
    - tool_calls: [{name: remember, arguments: {text: "the ledger closes on Fridays"}}]
    - tool_calls: [{name: remember, arguments: {text: "invoice 42 is paid"}}]
    - text: noted
tools: [{builtin: memory}]
limits: {max_stpes: 5}
"""


# ------------------------------------------------------------------ processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _everruns(env: dict[str, str], cwd: Path, log: Path, *args: str) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "everruns.cli", *args], env=env, cwd=cwd, stdout=out, stderr=out
        )


@dataclass
class Server:
    """One `everruns server` process (restartable on the same port)."""

    env: dict[str, str]
    cwd: Path
    args: tuple[str, ...]
    port: int = field(default_factory=_free_port)
    proc: subprocess.Popen[bytes] | None = None
    token: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.launch()
        self.wait_ready()

    def launch(self) -> None:
        log = self.cwd / f"server-{self.port}.log"
        self.proc = _everruns(
            self.env, self.cwd, log, "server", "--port", str(self.port), *self.args
        )

    def wait_ready(self) -> None:
        assert self.proc is not None
        log = self.cwd / f"server-{self.port}.log"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/v1/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"server not ready: {log.read_text()[-2000:]}")

    def kill(self) -> None:
        if self.proc is not None:
            stop(self.proc, signal.SIGKILL)

    def api(self, method: str, path: str, body: Any = None) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        res = httpx.request(method, self.url + path, json=body, headers=headers, timeout=10)
        assert res.status_code < 400, res.text
        return res.json() if res.content else None

    def start_run(self, agent: str, text: str) -> str:
        return str(self.api("POST", "/v1/runs", {"agent": agent, "input": text})["id"])

    def wait_status(self, run_id: str, status: str, timeout: float = 20) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        row: dict[str, Any] = {}
        while time.monotonic() < deadline:
            row = self.api("GET", f"/v1/runs/{run_id}")
            if row["status"] == status:
                return row
            time.sleep(0.1)
        raise AssertionError(f"run {run_id} is {row.get('status')}, not {status}")


@dataclass
class Fleet:
    server: Server
    auth: Server
    env: dict[str, str]
    cwd: Path
    worker: subprocess.Popen[bytes] | None = None

    def start_worker(self, tag: str) -> subprocess.Popen[bytes]:
        self.worker = _everruns(
            self.env, self.cwd, self.cwd / f"worker-{tag}.log", "worker", *WORKER_ARGS
        )
        return self.worker


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """`everruns server --no-worker`, a separate worker, and an `--auth` server, one database."""
    cwd = tmp_path_factory.mktemp("fleet")
    env = env_for(f"sqlite:///{cwd / 'everruns.db'}", EVERRUNS_TEST_LEDGER=str(cwd / "ledger"))
    server = Server(env, cwd, ("--no-worker",))
    auth = Server(env, cwd, ("--no-worker", "--auth"))
    fl = Fleet(server, auth, env, cwd)
    try:
        server.start()  # creates the database; the others start in parallel
        fl.start_worker("first")
        auth.launch()
        token = subprocess.Popen(
            [sys.executable, "-m", "everruns.cli", "token", "create", "--name", "ui-test"],
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for spec in (SLOW, SLEEPER, QUICK, STEPPER, GATED):
            server.api("POST", "/v1/agents", {"spec": spec})
        out, _ = token.communicate(timeout=60)
        assert token.returncode == 0
        auth.token = out.strip().splitlines()[-1]
        auth.wait_ready()
        yield fl
    finally:
        if fl.worker is not None:
            stop(fl.worker)
        server.kill()
        auth.kill()


@pytest.fixture(scope="module")
def solo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`everruns server` with its embedded worker: token deltas stream to the browser."""
    cwd = tmp_path_factory.mktemp("solo")
    (cwd / "settings.yaml").write_text(UI_SETTINGS)
    env = env_for(
        f"sqlite:///{cwd / 'everruns.db'}",
        EVERRUNS_TEST_LEDGER=str(cwd / "ledger"),
        EVERRUNS_SETTINGS=str(cwd / "settings.yaml"),
    )
    server = Server(env, cwd, ())
    try:
        server.start()
        for spec in (WRITER, TREE, SHELL_FAIL, FOLLOWED, GATED):
            server.api("POST", "/v1/agents", {"spec": spec})
        yield server
    finally:
        if server.proc is not None:
            stop(server.proc)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserContext]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: install it with `apt-get install -y chromium` "
            "(`make browser` does); the web UI tests need a real browser"
        )
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
            color_scheme="light",
        )
        context.set_default_timeout(20_000)
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser: BrowserContext) -> Iterator[Page]:
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("dialog", lambda dialog: dialog.accept())
    try:
        yield page
    finally:
        page.close()
    assert not errors, f"JavaScript errors in the page: {errors}"


def _shot(page: Page, name: str, full_page: bool = True, readme: str | None = None) -> Path:
    """A screenshot in test-artifacts/; with EVERRUNS_UPDATE_SCREENSHOT=1 also the README's
    picture docs/`readme`."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.evaluate("document.getElementById('toasts')?.replaceChildren()")
    page.evaluate("window.scrollTo(0, 0)")  # else sticky bars are drawn mid-page
    page.screenshot(path=str(path), full_page=full_page)
    if readme and os.environ.get("EVERRUNS_UPDATE_SCREENSHOT") == "1":
        (ROOT / "docs").mkdir(exist_ok=True)
        shutil.copyfile(path, ROOT / "docs" / readme)
    return path


def _events_of(page: Page) -> list[tuple[int, str]]:
    items = page.locator("#timeline > li").evaluate_all(
        "els => els.map(e => [Number(e.dataset.seq), e.dataset.type])"
    )
    return [(int(seq), str(kind)) for seq, kind in items]


# ------------------------------------------------------------------ tests


def test_live_run_streams_asks_approval_and_renders_markdown(solo: Server, page: Page) -> None:
    # Start the run from the Agents page form, as a user would.
    page.goto(f"{solo.url}/#/agents/ledger-writer")
    expect(page.locator("#agent-spec")).to_contain_text("require_for:\n    - amo_record")
    page.get_by_label("Input").fill("Record invoice 42 and report.")
    page.get_by_role("button", name="Start run").click()
    page.wait_for_url("**/#/runs/run*")
    run_id = page.url.rsplit("/", 1)[1]

    # Text streams in from llm.delta events while the LLM call is still in flight.
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
    assert snapshot["completed"] == 0, snapshot
    assert THINKING.startswith(snapshot["text"]) and len(snapshot["text"]) < len(THINKING)
    expect(page.locator("#stream-text")).to_have_attribute("aria-live", "polite")
    expect(page.locator("#conn")).to_have_text("live")

    # The answer lands in the journal; the tool call waits for a human.
    answer = page.locator('[data-type="llm.completed"]').first
    expect(answer).to_contain_text(THINKING)
    expect(answer).to_contain_text('"key": "invoice-42"')
    expect(page.locator("#stream")).to_have_count(0)
    expect(page.locator("#run-status")).to_have_text("waiting")
    expect(page.locator('[data-type="approval.requested"]')).to_contain_text(
        "Approval needed: amo_record"
    )
    box = page.locator("#pending-approvals")
    expect(box).to_contain_text("Approve amo_record?")
    box.get_by_label("Reason").fill("matches the invoice")
    box.get_by_role("button", name="Approve").click()

    expect(page.locator('[data-type="approval.granted"]')).to_contain_text("matches the invoice")
    expect(page.locator("#pending-approvals")).to_be_hidden()
    expect(page.locator('[data-type="tool.completed"]')).to_contain_text(
        "amo_record recorded invoice-42"
    )
    expect(page.locator("#run-status")).to_have_text("completed", timeout=20_000)

    # The final result, rendered as safe Markdown.
    result = page.locator("#result-body")
    expect(result.locator("h1")).to_have_text("Ledger report")
    expect(result.locator("strong").first).to_have_text("Recorded")
    expect(result.locator("code")).to_have_text("invoice-42")
    expect(result.locator("em")).to_have_text("Acme Corp")
    expect(result.locator("ul > li")).to_have_count(2)
    expect(result.locator("ol > li")).to_have_count(2)
    link = result.get_by_role("link", name="the runbook")
    expect(link).to_have_attribute("href", "https://example.com/runbook")
    expect(result.locator("a")).to_have_count(1)
    expect(result.locator("b")).to_have_count(0)
    expect(result).to_contain_text("Raw HTML stays text: <b>not bold</b>")
    expect(page.locator("#conn")).to_have_text("run ended")

    # Usage and cost so far: 1250+96 and 1420+180 tokens at $3/$15 per million.
    expect(page.locator("#stat-tokens")).to_have_text("2,946")
    expect(page.locator("#stat-cost")).to_have_text("$0.0122")  # $0.01215
    expect(page.locator("#stat-steps")).to_have_text("2")
    events = _events_of(page)
    assert [seq for seq, _ in events] == list(range(1, len(events) + 1))
    run = solo.api("GET", f"/v1/runs/{run_id}")
    assert run["last_seq"] == len(events)
    assert [e["key"] for e in read_ledger(solo.cwd / "ledger")] == ["invoice-42"]

    page.evaluate("document.getElementById('toasts').replaceChildren()")
    page.locator("h1").first.scroll_into_view_if_needed()
    shot = _shot(page, "ui-run-page.png")
    (ROOT / "docs").mkdir(exist_ok=True)
    if os.environ.get("EVERRUNS_UPDATE_SCREENSHOT") == "1":  # refresh the README's picture
        shutil.copyfile(shot, ROOT / "docs" / "screenshot-run.png")

    # A follow-up message re-opens the finished run; the page follows it again.
    page.get_by_label("Message to the agent").fill("Anything else?")
    page.get_by_role("button", name="Send").click()
    expect(page.locator('[data-type="message.user"]')).to_contain_text("Anything else?")
    result = page.locator("#result-body")
    expect(result).to_contain_text("Nothing else changed.", timeout=20_000)
    expect(page.locator("#run-status")).to_have_text("completed")
    # Markup in a result is shown as text, never run: no element, no javascript: link.
    expect(result).to_contain_text("<img src=x onerror=window.__xss=1>")
    expect(result.locator("img, script, a")).to_have_count(0)
    assert page.evaluate("window.__xss") is None

    # Fork from the first answer: a new run with the journal up to that event.
    seq = page.locator('[data-type="llm.completed"]').first.get_attribute("data-seq")
    page.get_by_role("button", name=f"Fork a new run from event {seq}").click()
    page.wait_for_url(lambda url: run_id not in url)
    expect(page.locator('[data-type="run.forked"]')).to_contain_text(f"at event {seq}")
    expect(page.locator('[data-type="approval.requested"]')).to_be_visible()

    # Phone width, dark mode: nothing overflows sideways.
    page.set_viewport_size({"width": 375, "height": 812})
    page.emulate_media(color_scheme="dark")
    page.goto(f"{solo.url}/#/runs/{run_id}")
    expect(page.locator("#run-status")).to_have_text("completed")
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(14, 16, 20)", background
    _shot(page, "ui-run-page-phone-dark.png")
    page.goto(f"{solo.url}/#/runs")
    expect(page.locator(f'tr[data-run-id="{run_id}"]')).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    _shot(page, "ui-runs-phone-dark.png")


def test_runs_list_updates_live_and_filters(fleet: Fleet, page: Page) -> None:
    server = fleet.server
    page.goto(f"{server.url}/#/runs")
    expect(page.get_by_role("heading", name="Runs")).to_be_visible()
    page.evaluate("window.__noReload = true")
    first = server.start_run("quick", "alpha bravo")
    second = server.start_run("quick", "charlie delta")
    waiting = server.start_run("gated", "needs a human")
    for run_id in (first, second):
        row = page.locator(f'tr[data-run-id="{run_id}"]')
        expect(row).to_be_visible()
        expect(row).to_have_attribute("data-status", "completed", timeout=20_000)
    expect(page.locator(f'tr[data-run-id="{waiting}"]')).to_have_attribute("data-status", "waiting")
    row = page.locator(f'tr[data-run-id="{first}"]')
    expect(row.locator('[data-label="Agent"]')).to_contain_text("quick")
    expect(row.locator('[data-label="Steps"]')).to_have_text("1")
    expect(row.locator('[data-label="Age"]')).not_to_be_empty()
    assert int(row.locator('[data-label="Tokens"]').inner_text().replace(",", "")) > 0
    expect(row.locator('[data-label="Cost"]')).to_contain_text("$")
    assert page.evaluate("window.__noReload") is True  # live, without reloading
    expect(page.get_by_role("button", name="Show more")).to_be_hidden()  # one page only
    expect(page.get_by_role("button", name="Sign out")).to_be_hidden()  # auth is off

    page.get_by_label("Status").select_option("waiting")
    expect(page.locator(f'tr[data-run-id="{waiting}"]')).to_be_visible()
    expect(page.locator(f'tr[data-run-id="{first}"]')).to_have_count(0)
    assert "status=waiting" in page.url
    page.get_by_label("Status").select_option("")
    page.get_by_label("Agent").select_option("quick")
    expect(page.locator(f'tr[data-run-id="{second}"]')).to_be_visible()
    expect(page.locator(f'tr[data-run-id="{waiting}"]')).to_have_count(0)
    page.get_by_label("Search").fill("charlie")
    expect(page.locator("tbody tr")).to_have_count(1)
    expect(page.locator(f'tr[data-run-id="{second}"]')).to_be_visible()
    page.get_by_label("Search").fill("")
    page.get_by_label("Agent").select_option("")
    expect(page.locator(f'tr[data-run-id="{waiting}"]')).to_be_visible()
    _shot(page, "ui-runs-list.png")

    page.locator(f'tr[data-run-id="{first}"] a').click()
    expect(page.locator("#result-body")).to_have_text("quick answer")
    server.api("POST", f"/v1/runs/{waiting}/cancel", {})


def test_takeover_is_marked_in_the_timeline(fleet: Fleet, page: Page) -> None:
    server = fleet.server
    run_id = server.start_run("slow-llm", "survive a crash")
    page.goto(f"{server.url}/#/runs/{run_id}")
    expect(page.locator('[data-type="llm.started"]')).to_have_count(1)
    started = page.locator('[data-type="run.started"]').first
    expect(started).to_contain_text("Started by worker")
    first_worker = server.api("GET", f"/v1/runs/{run_id}/events")[1]["data"]["worker"]

    assert fleet.worker is not None
    stop(fleet.worker, signal.SIGKILL)  # dies mid LLM call, holding the lease
    fleet.start_worker("second")

    takeover = page.locator(".ev.takeover")
    expect(takeover).to_have_count(1, timeout=20_000)
    events = server.api("GET", f"/v1/runs/{run_id}/events")
    second = [e for e in events if e["type"] == "run.started"][-1]["data"]
    assert second["takeover"] is True and second["worker"] != first_worker
    expect(takeover).to_contain_text(f"Taken over by worker {second['worker']}")
    expect(takeover).to_contain_text(f"The previous worker {first_worker}")
    expect(page.locator("#run-status")).to_have_text("completed", timeout=20_000)
    expect(page.locator("#result-body")).to_have_text("survived the takeover")
    _shot(page, "ui-run-takeover.png")


def test_cancel_from_the_ui_and_workers_page(fleet: Fleet, page: Page) -> None:
    server = fleet.server
    page.goto(f"{server.url}/#/agents/sleeper")
    page.get_by_label("Input").fill("sleep a minute")
    page.get_by_role("button", name="Start run").click()
    page.wait_for_url("**/#/runs/run*")
    run_id = page.url.rsplit("/", 1)[1]
    expect(page.locator('[data-type="llm.started"]')).to_have_count(1)
    expect(page.locator("#run-status")).to_have_text("running")

    # The worker holding it shows one run on the Workers page.
    holder = server.api("GET", f"/v1/runs/{run_id}")["lease_owner"]
    page.get_by_role("link", name="Workers").click()
    row = page.locator(f'tr[data-worker-id="{holder}"]')
    expect(row.locator('[data-label="Runs held"]')).to_have_text("1")
    page.go_back()

    expect(page.locator('[data-type="llm.started"]')).to_have_count(1)
    page.get_by_role("button", name="Cancel").click()  # the confirm() is accepted
    expect(page.locator('[data-type="run.cancelled"]')).to_be_visible(timeout=15_000)
    expect(page.locator("#run-status")).to_have_text("cancelled")
    expect(page.locator("#result")).to_contain_text("Cancelled")
    expect(page.get_by_role("button", name="Cancel")).to_be_disabled()
    assert server.api("GET", f"/v1/runs/{run_id}")["status"] == "cancelled"


def test_reconnects_after_the_network_drops(fleet: Fleet, page: Page) -> None:
    server = fleet.server
    run_id = server.start_run("stepper", "two slow steps")
    page.goto(f"{server.url}/#/runs/{run_id}")
    expect(page.locator('[data-type="tool.started"]')).to_have_count(1)
    expect(page.locator("#conn")).to_have_text("live")

    server.kill()  # the API goes away; the worker keeps executing the run
    expect(page.locator("#conn")).to_have_text("reconnecting…")
    time.sleep(1.5)
    server.start()

    expect(page.locator("#run-status")).to_have_text("completed", timeout=30_000)
    expect(page.locator("#result-body")).to_have_text("stepped twice")
    events = _events_of(page)
    journal = [(e["seq"], e["type"]) for e in server.api("GET", f"/v1/runs/{run_id}/events")]
    assert events == journal  # everything missed was filled in, nothing twice


def test_approvals_inbox_pause_resume_and_deny(fleet: Fleet, page: Page) -> None:
    server = fleet.server
    run_id = server.start_run("gated", "please record gate-1")
    server.wait_status(run_id, "waiting")

    page.goto(f"{server.url}/#/runs/{run_id}")
    expect(page.locator("#run-status")).to_have_text("waiting")
    page.get_by_role("button", name="Pause").click()
    expect(page.locator("#run-status")).to_have_text("paused")
    page.get_by_role("button", name="Resume").click()
    expect(page.locator('[data-type="run.resumed"]')).to_be_visible()
    expect(page.locator("#run-status")).to_have_text("waiting")

    page.get_by_role("link", name="Approvals").click()
    card = page.locator(f'li[data-key="{run_id}/call_1_1"]')
    expect(card).to_contain_text("amo_record")
    expect(card).to_contain_text('"key": "gate-1"')
    expect(page.locator("#approvals-count")).not_to_have_text("")
    card.get_by_label("Reason").fill("not today")
    card.get_by_role("button", name="Deny").click()
    expect(card).to_have_count(0)

    row = server.wait_status(run_id, "completed")
    assert row["result"] == "understood, not recorded"
    events = server.api("GET", f"/v1/runs/{run_id}/events")
    failed = next(e for e in events if e["type"] == "tool.failed")
    assert failed["data"]["error"] == "denied by a human: not today"
    assert "gate-1" not in [e["key"] for e in read_ledger(fleet.cwd / "ledger")]


def test_login_with_a_token_and_stream_with_access_token(fleet: Fleet, page: Page) -> None:
    auth = fleet.auth
    assert auth.token
    run_id = fleet.server.start_run("quick", "behind auth")
    page.goto(f"{auth.url}/#/runs")
    token = page.get_by_label("API token")
    expect(token).to_be_focused()
    token.fill("not-a-token")
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#login-error")).to_contain_text("not accepted")
    page.get_by_label("API token").fill(auth.token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator(f'tr[data-run-id="{run_id}"]')).to_be_visible()
    assert page.evaluate("localStorage.getItem('everruns.token')") == auth.token

    # The event stream (EventSource, no headers) authenticates with ?access_token=.
    page.goto(f"{auth.url}/#/runs/{run_id}")
    expect(page.locator("#result-body")).to_have_text("quick answer")
    expect(page.locator("#conn")).to_have_text("run ended")
    res = httpx.get(f"{auth.url}/v1/runs/{run_id}/events/stream")
    assert res.status_code == 401
    res = httpx.get(f"{auth.url}/v1/runs/{run_id}/events?access_token={auth.token}")
    assert res.status_code == 401  # only the stream takes a token in the URL

    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_label("API token")).to_be_visible()


def test_markdown_renderer_is_safe(fleet: Fleet, page: Page) -> None:
    page.goto(f"{fleet.server.url}/#/workers")
    expect(page.get_by_role("heading", name="Workers")).to_be_visible()
    # The "needs attention" list (health.js) shows what /v1/health/attention says.
    expect(page.get_by_role("heading", name="Needs attention")).to_be_visible()
    expect(page.locator("#attention-status")).to_have_text(
        re.compile(r"Nothing needs attention\.|\d+ findings? \(same as everruns doctor\):")
    )
    checks = {f["check"] for f in fleet.server.api("GET", "/v1/health/attention")}
    shown = set(
        page.locator("#attention-list li").evaluate_all("els => els.map(e => e.dataset.check)")
    )
    assert shown <= checks | {"dead_worker", "stuck_run"}, (shown, checks)
    cases = {
        "# Title": "<h1>Title</h1>",
        "### Three": "<h3>Three</h3>",
        "**b** and *i* and _u_ and `c*d*`": (
            "<p><strong>b</strong> and <em>i</em> and <em>u</em> and <code>c*d*</code></p>"
        ),
        "- a\n- b": "<ul><li>a</li><li>b</li></ul>",
        "3. x\n4. y": '<ol start="3"><li>x</li><li>y</li></ol>',
        "<img src=x onerror=alert(1)>": "<p>&lt;img src=x onerror=alert(1)&gt;</p>",
        "[x](javascript:alert(1))": "<p>[x](javascript:alert(1))</p>",
        "[x](data:text/html,hi)": "<p>[x](data:text/html,hi)</p>",
        '[x](https://a.example/"onmouseover="alert(1))': (
            '<p><a href="https://a.example/&quot;onmouseover=&quot;alert(1" '
            'rel="noopener noreferrer nofollow" target="_blank">x</a>)</p>'
        ),
        "[**b**](http://h.example/a_b_c)": (
            '<p><a href="http://h.example/a_b_c" rel="noopener noreferrer nofollow" '
            'target="_blank"><strong>b</strong></a></p>'
        ),
        "```\n<b>x</b>\n```": "<pre><code>&lt;b&gt;x&lt;/b&gt;</code></pre>",
        "snake_case_name": "<p>snake_case_name</p>",
        "line one\nline two": "<p>line one<br>line two</p>",
    }
    rendered = page.evaluate(
        """async (cases) => {
            const m = await import('/ui/markdown.js');
            return Object.fromEntries(Object.keys(cases).map(k => [k, m.renderMarkdown(k)]));
        }""",
        cases,
    )
    for source, expected in cases.items():
        assert rendered[source] == expected, (source, rendered[source])


def test_ui_is_served_with_security_headers(fleet: Fleet) -> None:
    res = httpx.get(fleet.server.url + "/")
    assert res.status_code == 200 and "text/html" in res.headers["content-type"]
    assert "script-src 'self'" in res.headers["content-security-policy"]
    asset = httpx.get(fleet.server.url + "/ui/app.js")
    assert asset.status_code == 200 and "javascript" in asset.headers["content-type"]
    assert asset.headers["x-content-type-options"] == "nosniff"
    # The API keeps its own 404s; the UI is not in the OpenAPI document.
    missing = httpx.get(fleet.server.url + "/v1/nope")
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("application/problem+json")
    paths = httpx.get(fleet.server.url + "/openapi.json").json()["paths"]
    assert "/" not in paths and not any(p.startswith("/ui") for p in paths)


def _sse(event: dict[str, Any]) -> str:
    head = f"id: {event['seq']}\n" if "seq" in event else ""
    return f"{head}event: {event['type']}\ndata: {json.dumps(event)}\n\n"


def test_superseded_deltas_are_discarded_and_events_deduplicated(fleet: Fleet, page: Page) -> None:
    """Client logic on a scripted stream: a failed attempt's late deltas, a replayed
    duplicate, and a gap that is filled in from the JSON journal."""
    rid = "run_fake"
    now = time.time()

    def ev(seq: int, kind: str, **data: Any) -> dict[str, Any]:
        return {"run_id": rid, "seq": seq, "type": kind, "ts": now, "data": data}

    def delta(attempt: int, text: str) -> dict[str, Any]:
        return {
            "run_id": rid,
            "type": "llm.delta",
            "ephemeral": True,
            "data": {"attempt": attempt, "text": text},
        }

    stream = [
        ev(1, "run.created", input="hi", agent={"name": "fake", "version": 1}),
        ev(2, "run.started", worker="w1", epoch=1, takeover=False),
        ev(3, "llm.started", attempt=1, step=1, model="scripted"),
        delta(1, "Old partial "),
        ev(4, "llm.failed", attempt=1, error="boom", retryable=True, retry_at=now),
        ev(2, "run.started", worker="w1", epoch=1, takeover=False),  # a replayed duplicate
        ev(5, "llm.started", attempt=2, step=1, model="scripted"),
        delta(1, "STALE"),  # late, from the superseded attempt
        delta(2, "Fresh "),
        delta(2, "words"),
        ev(7, "message.user", content="second"),  # seq 6 was missed: a gap
    ]
    journal = [ev(6, "message.user", content="first"), ev(7, "message.user", content="second")]
    row = {
        "id": rid,
        "agent": "fake",
        "agent_version": 1,
        "parent_id": None,
        "status": "running",
        "steps": 0,
        "usage": {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0, "cost_usd": 0.0},
        "input": "hi",
        "result": None,
        "error": None,
        "epoch": 1,
        "lease_owner": "w1",
        "wake_at": None,
        "last_seq": 7,
        "created_at": now,
        "updated_at": now,
    }
    served = {"streams": 0}

    def on_stream(route: Any) -> None:
        served["streams"] += 1
        body = "".join(map(_sse, stream)) if served["streams"] == 1 else ": idle\n\n"
        route.fulfill(status=200, headers={"Content-Type": "text/event-stream"}, body=body)

    base = fleet.server.url
    page.route(f"{base}/v1/runs/{rid}/events/stream*", on_stream)
    page.route(f"{base}/v1/runs/{rid}/events?*", lambda r: r.fulfill(json=journal))
    page.route(f"{base}/v1/runs/{rid}", lambda r: r.fulfill(json=row))
    page.goto(f"{base}/#/runs/{rid}")

    expect(page.locator("#stream-text")).to_have_text("Fresh words")
    expect(page.locator(".superseded")).to_have_text("Old partial ")
    expect(page.locator('[data-type="message.user"]')).to_have_count(2)
    assert [seq for seq, _ in _events_of(page)] == [1, 2, 3, 4, 5, 6, 7]
    assert "STALE" not in page.locator("main").inner_text()


# ------------------------------------------------------------------ issue 15: the first hour


def _in_viewport(page: Page, selector: str) -> bool:
    return bool(
        page.evaluate(
            """(sel) => { const r = document.querySelector(sel).getBoundingClientRect();
                return r.height > 0 && r.top >= 0 && r.bottom <= window.innerHeight; }""",
            selector,
        )
    )


def test_run_tree_groups_children_and_lists_them_live(solo: Server, page: Page) -> None:
    parent = solo.start_run("reviewer", "Review the three documents")
    again = solo.start_run("reviewer", "Review them again")  # the same three inline specs
    page.goto(f"{solo.url}/#/runs/{parent}")
    children = page.locator("#children tbody tr")
    expect(children).to_have_count(3, timeout=20_000)
    # Live: the children are listed while they run, then each ends, with a link and a cost.
    expect(page.locator('#children tr[data-status="running"]').first).to_be_visible()
    expect(page.locator('#children tr[data-status="completed"]')).to_have_count(3, timeout=30_000)
    kids = solo.api("GET", f"/v1/runs?parent_id={parent}")["items"]
    assert {k["parent_id"] for k in kids} == {parent} and len(kids) == 3
    first = min(kids, key=lambda k: k["created_at"])
    row = page.locator(f'#children tr[data-child-id="{first["id"]}"]')
    expect(row.locator('[data-label="Cost"]')).to_contain_text("$")
    expect(row.get_by_role("link", name=first["id"])).to_have_attribute(
        "href", f"#/runs/{first['id']}"
    )
    expect(page.locator("#run-status")).to_have_text("completed", timeout=20_000)
    expect(page.locator("#tree-totals")).to_contain_text("3 sub-agents, 3 finished")
    # Tree totals: the parent and its children (without a ledger, summed by the page).
    kids = solo.api("GET", f"/v1/runs?parent_id={parent}")["items"]
    tree = [solo.api("GET", f"/v1/runs/{parent}"), *kids]
    total = sum(r["usage"]["cost_usd"] for r in tree)
    expect(page.locator("#tree-cost")).to_have_text(f"${total:.4f}")
    # Identical inline specs: one doc-reader version per distinct spec, however many reviews.
    solo.wait_status(again, "completed")
    rerun = solo.api("GET", f"/v1/runs?parent_id={again}")["items"]
    versions = {k["input"]: k["agent_version"] for k in kids}
    assert {k["input"]: k["agent_version"] for k in rerun} == versions
    assert sorted(versions.values()) == [1, 2, 3]
    assert solo.api("GET", "/v1/agents/doc-reader")["version"] == 3
    _shot(page, "ui-run-tree.png", full_page=False, readme="screenshot-tree.png")

    # The runs list: the three children right under their parent, collapsible.
    page.goto(f"{solo.url}/#/runs")
    page.get_by_role("button", name=f"Hide the 3 sub-agent runs of {again}").click()
    rows = page.locator(f'tr[data-run-id="{parent}"], tr[data-parent-id="{parent}"]')
    expect(rows).to_have_count(4)
    order = page.locator("tbody tr").evaluate_all("els => els.map(e => e.dataset.runId)")
    at = order.index(parent)
    assert set(order[at + 1 : at + 4]) == {k["id"] for k in kids}, order
    expect(page.locator(f'tr[data-parent-id="{parent}"][data-depth="1"]')).to_have_count(3)
    _shot(page, "ui-runs-tree.png", readme="screenshot-runs-tree.png")
    toggle = page.get_by_role("button", name=f"Hide the 3 sub-agent runs of {parent}")
    expect(toggle).to_have_attribute("aria-expanded", "true")
    toggle.click()
    expect(page.locator(f'tr[data-parent-id="{parent}"]').first).to_be_hidden()
    page.get_by_role("button", name=f"Show the 3 sub-agent runs of {parent}").click()
    expect(page.locator(f'tr[data-parent-id="{parent}"]')).to_have_count(3)
    expect(page.locator(f'tr[data-parent-id="{parent}"]').first).to_be_visible()


def test_failed_shell_call_is_a_failure_and_fork_sits_on_turns(solo: Server, page: Page) -> None:
    run_id = solo.start_run("shell-fail", "run the check")
    page.goto(f"{solo.url}/#/runs/{run_id}")
    expect(page.locator("#run-status")).to_have_text("completed", timeout=20_000)
    result = page.locator('[data-type="tool.completed"]')
    expect(result).to_have_class("ev tool error")
    expect(result).to_contain_text("Tool shell failed: exit code 3")
    expect(result.locator(".ev-title")).to_have_css("color", "rgb(180, 35, 27)")  # --bad
    expect(result).not_to_contain_text("returned")
    # Fork only where a turn ends: after an answer, after the step's last tool result.
    forks = page.locator("#timeline .fork")
    bounded = page.locator("#timeline > li:has(.fork)").evaluate_all(
        "els => els.map(e => e.dataset.type)"
    )
    assert bounded == ["llm.completed", "tool.completed", "llm.completed", "run.completed"]
    expect(forks).to_have_count(4)
    _shot(page, "ui-shell-failure.png", full_page=False, readme="screenshot-failure.png")


def test_follows_the_live_end_with_a_jump_pill(solo: Server, page: Page) -> None:
    page.set_viewport_size({"width": 1000, "height": 600})
    run_id = solo.start_run("many-steps", "twelve steps")
    page.goto(f"{solo.url}/#/runs/{run_id}")
    expect(page.locator('[data-type="tool.completed"]').nth(2)).to_be_attached(timeout=20_000)
    # Following: the newest event is on screen without any scrolling by the user.
    page.wait_for_function(
        """() => { const l = document.querySelector('#timeline > li:last-child');
            const r = l.getBoundingClientRect(); return r.bottom <= window.innerHeight + 2; }"""
    )
    assert page.evaluate("window.scrollY") > 0
    # The user scrolls up: the page stays there, a pill offers the way back.
    page.mouse.wheel(0, -20_000)
    page.wait_for_function("() => window.scrollY === 0")
    pill = page.get_by_role("button", name="Jump to live")
    expect(pill).to_be_visible(timeout=10_000)  # at the next event
    assert page.evaluate("window.scrollY") == 0
    pill.click()
    expect(pill).to_be_hidden()
    n = page.locator("#timeline > li").count()
    expect(page.locator(f"#timeline > li:nth-child({n + 1})")).to_be_attached(timeout=10_000)
    page.wait_for_function(
        """() => { const l = document.querySelector('#timeline > li:last-child');
            const r = l.getBoundingClientRect(); return r.bottom <= window.innerHeight + 2; }"""
    )
    expect(page.locator("#run-status")).to_have_text("completed", timeout=30_000)
    expect(pill).to_be_hidden()


def test_agent_from_yaml_names_the_field_and_memory_panel(solo: Server, page: Page) -> None:
    page.goto(f"{solo.url}/#/agents")
    page.get_by_role("button", name="New agent").click()
    editor = page.get_by_label("Spec (YAML)")
    editor.fill("name: broken\nmodel: {provider: scripted\ntools: []\n")  # unclosed mapping
    page.get_by_role("button", name="Save agent").click()
    expect(page.locator("#yaml-error .field-name")).to_have_text(re.compile(r"^line \d+$"))
    expect(page.locator("#yaml-error")).to_contain_text("invalid YAML")
    editor.fill(TYPO_YAML)
    page.get_by_role("button", name="Save agent").click()
    error = page.locator("#yaml-error")
    expect(error).to_contain_text("Invalid agent spec")
    expect(error.locator(".field-name")).to_have_text("limits.max_stpes")
    expect(error).to_contain_text("Extra inputs are not permitted")
    _shot(page, "ui-agent-yaml-error.png", readme="screenshot-agent-yaml.png")
    editor.fill(TYPO_YAML.replace("max_stpes", "max_steps"))
    page.get_by_role("button", name="Save agent").click()
    page.wait_for_url("**/#/agents/notetaker")
    spec = page.locator("#agent-spec")
    expect(spec).to_contain_text("max_steps: 5")
    # The YAML shown reads back as the stored spec (and can be edited as a new version).
    shown = yaml.safe_load(spec.inner_text())
    assert shown == solo.api("GET", "/v1/agents/notetaker")["spec"]
    page.get_by_role("button", name="Edit as a new version").click()
    text = page.get_by_label("Spec (YAML)").input_value()
    assert yaml.safe_load(text) == shown
    page.get_by_label("Spec (YAML)").fill(text.replace("max_steps: 5", "max_steps: 6"))
    page.get_by_role("button", name="Save agent").click()
    expect(page.locator("#agent-spec")).to_contain_text("max_steps: 6")
    expect(page.get_by_label("Version")).to_have_value("2")
    assert solo.api("GET", "/v1/agents/notetaker/versions/1")["spec"] == shown

    # A run remembers two notes; the Memory panel lists them, deletes one, clears all.
    page.get_by_label("Input").fill("learn")
    page.get_by_role("button", name="Start run").click()
    page.wait_for_url("**/#/runs/run*")
    expect(page.locator("#run-status")).to_have_text("completed", timeout=20_000)
    page.goto(f"{solo.url}/#/agents/notetaker")
    items = page.locator("#memory-list li[data-key]")
    expect(items).to_have_count(2)
    expect(items.first).to_contain_text("the ledger closes on Fridays")
    memory = solo.api("GET", "/v1/agents/notetaker/memory")["items"]
    assert [m["value"] for m in memory] == ["the ledger closes on Fridays", "invoice 42 is paid"]
    _shot(page, "ui-agent-memory.png", readme="screenshot-agent.png")
    page.get_by_role("button", name=f"Delete memory {memory[0]['key']}").click()
    expect(items).to_have_count(1)
    expect(items.first).to_contain_text("invoice 42 is paid")
    page.get_by_role("button", name="Clear all").click()  # the confirm() is accepted
    expect(page.locator("#memory-list")).to_contain_text("Nothing remembered yet.")
    assert solo.api("GET", "/v1/agents/notetaker/memory") == {"items": []}


def test_phone_approval_is_visible_without_scrolling(solo: Server, page: Page) -> None:
    page.set_viewport_size({"width": 390, "height": 844})
    run_id = solo.start_run("gated", "please record gate-1")
    solo.wait_status(run_id, "waiting")
    page.goto(f"{solo.url}/#/runs/{run_id}")
    approve = page.locator("#pending-approvals").get_by_role("button", name="Approve")
    expect(approve).to_be_visible()
    expect(page.locator('[data-type="run.waiting"]')).to_be_attached()
    # On screen wherever the page is: at the top, and at the bottom (sticky).
    page.evaluate("window.scrollTo(0, 0)")
    page.wait_for_function("() => window.scrollY === 0")
    assert _in_viewport(page, "#pending-approvals button.ok")
    _shot(page, "ui-phone-approval.png", full_page=False, readme="screenshot-phone-approval.png")
    page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
    page.wait_for_function("() => window.scrollY > 0")
    assert _in_viewport(page, "#pending-approvals button.ok")
    approve.click()
    expect(page.locator('[data-type="approval.granted"]')).to_be_attached()
    expect(page.locator("#pending-approvals")).to_be_hidden()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390


def _fake_run(rid: str, now: float, **fields: Any) -> dict[str, Any]:
    usage = {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15, "cost_usd": 0.5}
    return {
        "id": rid,
        "agent": "fake",
        "agent_version": 1,
        "parent_id": None,
        "status": "waiting",
        "steps": 1,
        "usage": usage,
        "input": "hi",
        "result": None,
        "error": None,
        "epoch": 1,
        "lease_owner": None,
        "wake_at": None,
        "last_seq": 3,
        "created_at": now,
        "updated_at": now,
        **fields,
    }


def test_cursor_paging_countdowns_unknown_cost_and_yaml(solo: Server, page: Page) -> None:
    """Client logic on served fixtures: "Show more" follows the API's cursor, wake times
    count down, `cost_known: false` reads "unknown", a `tree_usage` is the tree's total,
    and the YAML the UI writes reads back as the same values in PyYAML."""
    base = solo.url
    now = time.time()
    first = [_fake_run(f"run_p1_{i}", now - i) for i in range(2)]
    second = [_fake_run("run_p2_0", now - 10)]
    asked: list[str | None] = []

    def runs(route: Any) -> None:
        cursor = parse_qs(urlparse(route.request.url).query).get("cursor", [None])[0]
        asked.append(cursor)
        if cursor == "c1":
            route.fulfill(json={"items": second, "next_cursor": None})
        else:
            route.fulfill(json={"items": first, "next_cursor": "c1"})

    page.route(f"{base}/v1/runs?*", runs)
    page.route(f"{base}/v1/agents", lambda r: r.fulfill(json=[]))
    page.goto(f"{base}/#/runs")
    expect(page.locator("tbody tr")).to_have_count(2)
    page.get_by_role("button", name="Show more").click()
    expect(page.locator('tr[data-run-id="run_p2_0"]')).to_be_visible()
    expect(page.locator("tbody tr")).to_have_count(3)
    expect(page.get_by_role("button", name="Show more")).to_be_hidden()
    assert "c1" in asked

    rid = "run_waits"
    wake = now + 45
    row = _fake_run(
        rid,
        now,
        usage={
            "input_tokens": 10,
            "output_tokens": 5,
            "total_tokens": 15,
            "cost_usd": 0.0,
            "cost_known": False,
        },
        tree_usage={"input_tokens": 30, "output_tokens": 9, "cost_usd": 1.25, "cost_known": True},
        last_seq=4,
    )
    journal = [
        {"run_id": rid, "seq": 1, "type": "run.created", "ts": now, "data": {"input": "hi"}},
        {"run_id": rid, "seq": 2, "type": "run.started", "ts": now, "data": {"worker": "w"}},
        {
            "run_id": rid,
            "seq": 3,
            "type": "tool.completed",
            "ts": now,
            "data": {"call_id": "c", "name": "spawn_agent", "output": "{}", "child": "run_p1_0"},
        },
        {
            "run_id": rid,
            "seq": 4,
            "type": "run.waiting",
            "ts": now,
            "data": {"reason": "sleep", "wake_at": wake},
        },
    ]
    page.route(
        f"{base}/v1/runs/{rid}/events/stream*",
        lambda r: r.fulfill(
            status=200,
            headers={"Content-Type": "text/event-stream"},
            body="".join(map(_sse, journal)),
        ),
    )
    page.route(f"{base}/v1/runs/{rid}/events?*", lambda r: r.fulfill(json=journal))
    page.route(f"{base}/v1/runs/{rid}", lambda r: r.fulfill(json=row))
    page.goto(f"{base}/#/runs/{rid}")
    countdown = page.locator('[data-type="run.waiting"] .countdown')
    expect(countdown).to_have_text(re.compile(r"^in \d+ s$"))
    before = int(countdown.inner_text().split()[1])
    page.wait_for_function(  # it ticks
        "(n) => Number(document.querySelector('.countdown').textContent.split(' ')[1]) < n",
        arg=before,
        timeout=10_000,
    )
    expect(page.locator("#stat-cost")).to_have_text("unknown")
    expect(page.locator("#tree-cost")).to_have_text("$1.25")  # the children (served) are 3
    expect(page.locator("#children tbody tr")).to_have_count(3)

    values = [
        {"name": "a", "prompt": "line one\nline two\n", "strip": "no newline\nat end"},
        {"odd": ["yes", "no", "on", "null", "~", "1.5", "0x1F", "", " lead", "trail ", "a: b"]},
        {"more": ["# not a comment", "x #y", "- item", "[x]", "{y}", "*ref", "&a", "!tag", "@at"]},
        {"nested": [{"a": [1, 2.5, True, None]}, [], {}, [[1, {"b": "c"}]]], "é": "ü ☃"},
        {"keys": {"yes": 1, "1": 2, "with space": 3, "colon:": 4}},
        {"blocks": ["  indented\nfirst", "tabs\tand\nlines", "ends\n\n", "\n"]},
    ]
    written = page.evaluate(
        """async (values) => {
            const m = await import('/ui/yaml.js');
            return values.map((v) => m.toYaml(v));
        }""",
        values,
    )
    for value, text in zip(values, written, strict=True):
        assert yaml.safe_load(text) == value, text


def test_budget_card_raises_limits_and_agent_cost(solo: Server, page: Page) -> None:
    """Issue 11: the run page shows own and tree usage, its form raises a limit and the
    failed run continues; the agent page lists the cost of its runs per day."""
    note = {"tool_calls": [{"name": "note", "arguments": {"text": "x"}}], "usage": USAGE_1K}
    spec = _agent(
        "budgeted",
        [note, {"text": "finished", "usage": USAGE_1K}],
        tools=[{"builtin": "notes"}],
        limits={"max_steps": 1},
    )
    solo.api("POST", "/v1/agents", {"spec": spec})
    run_id = solo.start_run("budgeted", "go")
    solo.wait_status(run_id, "failed")
    page.goto(f"{solo.url}/#/runs/{run_id}")
    expect(page.locator("#budget-own")).to_have_text("$0.0180 · 2,000 tokens")  # $3 + $15
    expect(page.locator("#budget-tree")).to_have_text("$0.0180 · 2,000 tokens")
    page.fill("#limit-steps", "5")
    page.click("#budget-raise")
    expect(page.locator("#budget-limits")).to_have_text("max_steps=5", timeout=20_000)
    row = solo.wait_status(run_id, "completed")
    assert row["result"] == "finished" and row["tree_usage"]["cost_usd"] == pytest.approx(0.036)
    page.goto(f"{solo.url}/#/agents/budgeted")
    expect(page.locator("#agent-cost")).to_contain_text("$0.0360")
