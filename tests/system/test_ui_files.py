"""The Files card and the progress bars in a real browser (issue 12): Debian's chromium
driven by Playwright against a real `everruns server` with its embedded worker (the live
`tool.progress` events are in-process, so they reach the page only from that worker).

The browser, page and server helpers are those of tests/system/test_ui.py.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect
from test_ui import Server, browser, page  # noqa: F401  (fixtures)

from helpers import TOOLING, env_for, stop

pytestmark = pytest.mark.timeout(120)

SETTINGS = """\
api_specs:
  allow_tools: [python]
  python_modules: [progresstools]
"""
TODO = b"line one\nline two\nline three\n"
BINARY = bytes(range(256)) * 3  # not text: the viewer offers a download instead
REPORT = "# Report\n\nall 3 checked\n"


def spec(gate: Path) -> dict[str, Any]:
    """Edit a handed-in file, write a new one, and fail after writing another; then a
    call that reports 3 of 10 until `gate` exists; then the answer."""
    return {
        "name": "filer",
        "model": {
            "provider": "scripted",
            "responses": [
                {
                    "tool_calls": [
                        {
                            "name": "edit_file",
                            "arguments": {"path": "notes/todo.txt", "old": "two", "new": "2"},
                        },
                        {
                            "name": "write_file",
                            "arguments": {"path": "out/report.md", "content": REPORT},
                        },
                        {"name": "half_done", "arguments": {}},
                    ]
                },
                {
                    "tool_calls": [
                        {"name": "tick", "arguments": {"done": 3, "total": 10, "gate": str(gate)}}
                    ]
                },
                {"text": "Edited the notes and wrote the report."},
            ],
        },
        "tools": [{"builtin": "workspace"}, "progresstools:tick", "progresstools:half_done"],
        "max_parallel_tools": 1,
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`everruns server` with its embedded worker, allowed the progress test tool."""
    cwd = tmp_path_factory.mktemp("ui-files")
    (cwd / "settings.yaml").write_text(SETTINGS)
    env = env_for(
        f"sqlite:///{cwd / 'everruns.db'}",
        EVERRUNS_SETTINGS=str(cwd / "settings.yaml"),
        EVERRUNS_WORKSPACE_ROOT=str(cwd / "workspaces"),
        PYTHONPATH=str(TOOLING),
    )
    srv = Server(env, cwd, ("--lease-ttl", "2"))
    try:
        srv.start()
        yield srv
    finally:
        if srv.proc is not None:
            stop(srv.proc)


def upload(server: Server, content: bytes) -> str:
    reply = httpx.post(f"{server.url}/v1/blobs", content=content, timeout=10)
    assert reply.status_code < 400, reply.text
    return str(reply.json()["sha256"])


def test_files_card_step_diffs_and_progress_bars(
    server: Server,
    page: Page,  # noqa: F811
    tmp_path: Path,
) -> None:
    gate = tmp_path / "gate"
    files = {"notes/todo.txt": upload(server, TODO), "data.bin": upload(server, BINARY)}
    run = server.api(
        "POST", "/v1/runs", {"spec": spec(gate), "input": "tidy the notes", "files": files}
    )
    run_id = str(run["id"])

    try:
        check_the_run(server, page, run_id, gate)
    finally:
        gate.touch()  # else the server's shutdown waits for the call


def check_the_run(server: Server, page: Page, run_id: str, gate: Path) -> None:  # noqa: F811
    # The live bar: the call reports 3 of 10 and is still running (nothing journaled yet).
    page.goto(f"{server.url}/#/runs/{run_id}")
    status = page.locator("#run-status")
    expect(status).to_contain_text("3 of 10 (30%) · 3 of 10 records")
    bar = status.locator("progress.tool-progress")
    expect(bar).to_have_attribute("value", "3")
    expect(bar).to_have_attribute("max", "10")
    assert server.api("GET", f"/v1/runs/{run_id}")["status"] == "running"
    assert not [
        e
        for e in server.api("GET", f"/v1/runs/{run_id}/events")
        if e["type"] == "tool.completed" and e["data"]["name"] == "tick"
    ]
    gate.touch()
    expect(status).to_contain_text("completed")
    expect(status).to_contain_text("3 of 10 (30%)")  # the journaled value stays

    # The Files card: the tree, a text file's content, downloads of one file and of all.
    card = page.locator("#files")
    tree = card.locator("#file-tree")
    expect(tree.locator("li[data-path]")).to_have_count(4, timeout=10_000)
    paths = tree.locator("li[data-path]").evaluate_all("els => els.map(e => e.dataset.path)")
    assert paths == ["data.bin", "notes/partial.txt", "notes/todo.txt", "out/report.md"]
    expect(tree.locator("li.folder")).to_have_text(["notes/", "out/"])
    todo = tree.locator('li[data-path="notes/todo.txt"]')
    expect(todo).to_contain_text("step 1 · call_1_1")  # the step that last changed it
    expect(tree.locator('li[data-path="data.bin"]')).to_contain_text("768 B · step 0 · handed in")
    todo.get_by_role("button", name="todo.txt").click()
    expect(card.locator("#file-view")).to_have_text("line one\nline 2\nline three\n")
    tree.locator('li[data-path="out/report.md"]').get_by_role("button", name="report.md").click()
    expect(card.locator("#file-view")).to_have_text(REPORT)
    with page.expect_download() as one:
        tree.locator('li[data-path="data.bin"]').get_by_role("button", name="Download").click()
    assert one.value.suggested_filename == "data.bin"
    assert Path(one.value.path()).read_bytes() == BINARY
    with page.expect_download() as everything:
        card.get_by_role("button", name="Download all (zip)").click()
    archive = zipfile.ZipFile(io.BytesIO(Path(everything.value.path()).read_bytes()))
    assert archive.read("notes/todo.txt") == b"line one\nline 2\nline three\n"
    assert archive.read("data.bin") == BINARY
    assert archive.read("out/report.md").decode() == REPORT

    # The timeline: each call that changed files shows its changes as a diff.
    edit = page.locator('#timeline > li[data-type="tool.completed"]').filter(has_text="edit_file")
    changed = edit.locator("details.files-changed")
    expect(changed.locator("summary")).to_have_text("Files changed (1): notes/todo.txt")
    changed.locator("summary").click()
    diff = changed.locator("pre.diff")
    expect(diff.locator("span.del")).to_have_text(["- line two"])
    expect(diff.locator("span.add")).to_have_text(["+ line 2"])
    write = page.locator('#timeline > li[data-type="tool.completed"]').filter(has_text="write_file")
    written = write.locator("details.files-changed")
    written.locator("summary").click()
    expect(written.locator("pre.diff span.add")).to_have_text(
        ["+ # Report", "+ ", "+ all 3 checked", "+ "]
    )
    expect(written.locator("pre.diff span.del")).to_have_count(0)
    failed = page.locator('#timeline > li[data-type="tool.failed"]').filter(has_text="half_done")
    expect(failed).to_contain_text("stopped halfway")
    partial = failed.locator("details.files-changed")
    expect(partial.locator("summary")).to_have_text("Files changed (1): notes/partial.txt")
    partial.locator("summary").click()
    expect(partial.locator("pre.diff span.add")).to_have_text(["+ half of it", "+ "])

    # The runs list shows the run's bar with the same numbers (from the run row).
    page.goto(f"{server.url}/#/runs")
    row = page.locator(f'tr[data-run-id="{run_id}"]')
    expect(row).to_contain_text("3 of 10 (30%)")
    expect(row.locator("progress.tool-progress")).to_have_attribute("value", "3")
