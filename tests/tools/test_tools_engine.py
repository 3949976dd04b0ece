"""Tools through the engine, end to end: real worker and CLI processes, scripted agents.

The scripted provider answers response k at LLM step k; tool call ids are
`call_<step>_<index>`. Workers run with short leases, so a takeover after a
SIGKILL waits about a second. Side effects are checked in a ledger file that
the test tools (tests/tooling/ledgertools.py, tests/tooling/wstools.py) append
to, and the journal is read straight from the database. The tests whose
outcome depends most on the store (approvals, durable sleep) run on SQLite and
PostgreSQL; the others on SQLite only, to keep the file fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import signal
import subprocess
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from everruns.core.events import INTERRUPTED_MESSAGE, Event, EventType
from everruns.core.state import TRUNCATION_MARKER, State, fold, transcript
from everruns.engine.worker import Worker
from everruns.settings import Settings
from everruns.spec import load_spec
from everruns.store import RunRow, Store
from helpers import TOOLING, cli, env_for, read_ledger, start_worker, stop, write_agent

pytestmark = pytest.mark.timeout(90)

WORKER_ARGS = ("--lease-ttl", "1", "--poll-interval", "0.1")
KILLED = -signal.SIGKILL


class Harness:
    """One database, its worker processes, a ledger and a workspace root under tmp."""

    def __init__(self, tmp: Path, db_url: str, store: Store):
        self.tmp = tmp
        self.db_url = db_url
        self.store = store
        self.ledger = tmp / "ledger.jsonl"
        self.workers: list[tuple[subprocess.Popen[bytes], Path]] = []

    def env(self, **extra: str) -> dict[str, str]:
        extra.setdefault("EVERRUNS_WORKSPACE_ROOT", str(self.tmp / "workspaces"))
        return env_for(self.db_url, EVERRUNS_TEST_LEDGER=str(self.ledger), **extra)

    def cli(self, *args: Any) -> subprocess.CompletedProcess[str]:
        return cli(*(str(a) for a in args), env=self.env(), cwd=self.tmp)

    def ok(self, *args: Any) -> str:
        result = self.cli(*args)
        assert result.returncode == 0, f"everruns {args}:\n{result.stdout}\n{result.stderr}"
        return result.stdout

    def start(self, spec: Path, text: str = "go") -> str:
        run_id = self.ok("start", spec, "--input", text).strip()
        assert run_id.startswith("run_"), run_id
        return run_id

    def status(self, run_id: str) -> dict[str, Any]:
        return json.loads(self.ok("status", run_id, "--json"))

    def worker(self, **extra: str) -> subprocess.Popen[bytes]:
        log = self.tmp / f"worker-{len(self.workers) + 1}.log"
        proc = start_worker(self.env(**extra), *WORKER_ARGS, cwd=self.tmp, log=log)
        self.workers.append((proc, log))
        return proc

    def logs(self) -> str:
        parts = []
        for proc, log in self.workers:
            text = log.read_text(errors="replace") if log.exists() else "(no log)"
            tail = "\n".join(text.splitlines()[-30:])
            parts.append(f"--- worker pid {proc.pid} (exit {proc.poll()}):\n{tail}")
        return "\n".join(parts)

    def assert_clean_logs(self) -> None:
        for _proc, log in self.workers:
            text = log.read_text(errors="replace") if log.exists() else ""
            assert "Traceback" not in text and " ERROR " not in text, f"{log}:\n{text}"

    def ledger_entries(self, tool: str | None = None) -> list[dict[str, Any]]:
        return [e for e in read_ledger(self.ledger) if tool is None or e["tool"] == tool]

    async def events(self, run_id: str) -> list[Event]:
        return await self.store.load_events(run_id)

    async def state(self, run_id: str) -> State:
        return fold(await self.events(run_id))

    async def wait(
        self, run_id: str, check: Callable[[RunRow], bool], what: str, timeout: float = 30
    ) -> RunRow:
        deadline = time.monotonic() + timeout
        while True:
            row = await self.store.get_run(run_id)
            if check(row):
                return row
            if time.monotonic() > deadline:
                types = [e.type for e in await self.events(run_id)]
                raise AssertionError(
                    f"run {run_id}: timed out after {timeout}s waiting for {what}; "
                    f"status {row.status}, journal {types}\n{self.logs()}"
                )
            await asyncio.sleep(0.05)

    async def wait_status(self, run_id: str, status: str, timeout: float = 30) -> RunRow:
        row = await self.wait(run_id, lambda r: r.status == status, f"status {status}", timeout)
        if status == "waiting":
            assert row.lease_owner is None
        return row


@contextlib.asynccontextmanager
async def harness(tmp: Path, db_url: str) -> AsyncIterator[Harness]:
    store = await Store.open(db_url)
    h = Harness(tmp, db_url, store)
    try:
        yield h
    finally:
        for proc, _log in h.workers:
            stop(proc, timeout=15)
        await store.close()


def call(tool: str, /, **arguments: Any) -> dict[str, Any]:
    return {"name": tool, "arguments": arguments}


def by_call(events: list[Event], call_id: str, *types: str) -> list[Event]:
    return [
        e for e in events if e.data.get("call_id") == call_id and (not types or e.type in types)
    ]


def result_of(events: list[Event], call_id: str) -> Event:
    (resolved,) = by_call(events, call_id, EventType.TOOL_COMPLETED, EventType.TOOL_FAILED)
    return resolved


def tool_message(state: State, call_id: str) -> dict[str, Any]:
    (message,) = [
        m for m in transcript(state) if m["role"] == "tool" and m["tool_call_id"] == call_id
    ]
    return message


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# ------------------------------------------------------------------ 1. workspace


async def test_workspace_survives_a_crash_and_moves_to_another_workers_disk(
    tmp_path: Path, sqlite_url: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("top secret\n")
    root_a, root_b = tmp_path / "root-a", tmp_path / "root-b"
    spec = write_agent(
        tmp_path / "ws.yaml",
        [
            {
                "tool_calls": [
                    call("write_file", path="a.txt", content="alpha\n"),
                    call("write_file", path="dir/b.txt", content="beta\n"),
                ]
            },
            {"tool_calls": [call("ws_slow", name="result.txt", content="gamma\n")]},
            {
                "tool_calls": [
                    call("edit_file", path="a.txt", old="alpha", new="ALPHA"),
                    call("read_file", path="../x"),
                    call("read_file", path="/etc/passwd"),
                    call("write_file", path="../escape.txt", content="nope"),
                    call("shell", command=f"ln -s '{outside}' out && ln -s /etc/passwd pw"),
                ]
            },
            {
                "tool_calls": [
                    call("read_file", path="out/secret.txt"),
                    call("read_file", path="pw"),
                    call("write_file", path="out/evil.txt", content="nope"),
                    call("list_files"),
                    call("read_file", path="result.txt"),
                    call("search_files", pattern="secret|root|gamma", regex=True),
                ]
            },
            {"text": "workspace done"},
        ],
        [{"builtin": "workspace"}, {"builtin": "shell"}, {"python": "wstools:ws_slow"}],
        max_parallel_tools=5,
    )
    async with harness(tmp_path, sqlite_url) as h:
        run_id = h.start(spec)
        first = h.worker(EVERRUNS_CRASH_AT="tool.mid", EVERRUNS_WORKSPACE_ROOT=str(root_a))
        assert first.wait(30) == KILLED, h.logs()
        second = h.worker(EVERRUNS_WORKSPACE_ROOT=str(root_b))
        await h.wait_status(run_id, "completed")
        events = await h.events(run_id)
        state = fold(events)

        # The slow tool ran twice (idempotent), each time on a different worker's
        # disk, and both times saw exactly the files of the completed step 1.
        runs = h.ledger_entries("ws_slow")
        assert [r["attempt"] for r in runs] == [1, 2], runs
        assert [r["pid"] for r in runs] == [first.pid, second.pid]
        assert [r["root"] for r in runs] == [str(root_a / run_id), str(root_b / run_id)]
        for r in runs:
            assert r["listing"] == ["a.txt", "dir"], r
            assert r["files"] == {"a.txt": "alpha\n", "dir/b.txt": "beta\n"}, r
        # The killed attempt's half-done write stayed on the dead worker's disk only.
        assert (root_a / run_id / "partial.txt").read_text() == "gamma\n"
        assert not (root_a / run_id / "result.txt").exists()
        journaled = set().union(*(set(e.data.get("files") or {}) for e in events))
        assert "partial.txt" not in journaled
        assert [e.data["attempt"] for e in by_call(events, "call_2_1", EventType.TOOL_STARTED)] == [
            1,
            2,
        ]
        assert result_of(events, "call_2_1").data["files"] == {"result.txt": sha("gamma\n")}

        # Path escapes are refused, and nothing was written outside.
        errors = {
            cid: result_of(events, cid).data.get("error")
            for cid in ("call_3_2", "call_3_3", "call_3_4", "call_4_1", "call_4_2", "call_4_3")
        }
        assert all(result_of(events, cid).type == EventType.TOOL_FAILED for cid in errors), errors
        assert errors["call_3_2"] == "'../x' is outside the workspace"
        assert "absolute paths are not allowed" in errors["call_3_3"]
        assert errors["call_3_4"] == "'../escape.txt' is outside the workspace"
        assert errors["call_4_1"] == "'out/secret.txt' is outside the workspace"
        assert errors["call_4_2"] == "'pw' is outside the workspace"
        assert errors["call_4_3"] == "'out/evil.txt' is outside the workspace"
        assert not (root_b / "escape.txt").exists() and not (outside / "evil.txt").exists()
        shell = json.loads(result_of(events, "call_3_5").data["output"])
        assert shell["exit_code"] == 0, shell
        assert json.loads(result_of(events, "call_4_4").data["output"]) == [
            "a.txt (6 bytes)",
            "dir/b.txt (5 bytes)",
            "result.txt (6 bytes)",
        ]
        assert result_of(events, "call_4_5").data["output"] == "gamma"
        # search_files does not follow the symlinks to outside either
        assert json.loads(result_of(events, "call_4_6").data["output"]) == ["result.txt:1: gamma"]
        assert tool_message(state, "call_4_1")["is_error"] is True

        # The journaled workspace (symlinks are never part of it), exported by the CLI.
        expected = {"a.txt": "ALPHA\n", "dir/b.txt": "beta\n", "result.txt": "gamma\n"}
        assert state.files == {path: sha(text) for path, text in expected.items()}
        listing = h.ok("workspace", run_id)
        assert [line.split()[-1] for line in listing.splitlines()] == sorted(expected)
        export = tmp_path / "export"
        assert "exported 3 files" in h.ok("workspace", run_id, "--export", export)
        exported = {
            p.relative_to(export).as_posix(): p.read_text()
            for p in sorted(export.rglob("*"))
            if p.is_file()
        }
        assert exported == expected
        assert not any(p.is_symlink() for p in export.rglob("*"))
        h.assert_clean_logs()


async def test_unfinished_parallel_call_writes_are_not_journaled(
    tmp_path: Path, sqlite_url: str
) -> None:
    """A call that completes while a parallel workspace call is half-way must not
    journal that call's half-done writes: after a crash they would come back."""
    spec = write_agent(
        tmp_path / "ws-parallel.yaml",
        [
            {
                "tool_calls": [
                    call("ws_slow", name="result.txt", content="gamma\n", sleep=3),
                    call("early_idem", key="later", sleep=1.5),
                ]
            },
            {"text": "done"},
        ],
        ["wstools:ws_slow", "wstools:early_idem"],
    )
    async with harness(tmp_path, sqlite_url) as h:
        run_id = h.start(spec)
        first = h.worker(EVERRUNS_CRASH_AT="after:tool.completed#1")
        assert first.wait(30) == KILLED, h.logs()
        before = await h.events(run_id)
        (early,) = [e for e in before if e.type == EventType.TOOL_COMPLETED]
        assert early.data["call_id"] == "call_1_2"  # finished while ws_slow was half-way
        assert "files" not in early.data, early.data
        h.worker(EVERRUNS_WORKSPACE_ROOT=str(tmp_path / "other-root"))
        await h.wait_status(run_id, "completed")
        runs = h.ledger_entries("ws_slow")
        assert [r["attempt"] for r in runs] == [1, 2]
        assert runs[1]["listing"] == [], runs[1]  # partial.txt died with the first worker
        events = await h.events(run_id)
        assert result_of(events, "call_1_1").data["files"] == {"result.txt": sha("gamma\n")}
        assert (await h.state(run_id)).files == {"result.txt": sha("gamma\n")}
        h.assert_clean_logs()


# ------------------------------------------------------------------ 2. parallel calls


async def test_parallel_calls_crash_after_three_results(tmp_path: Path, sqlite_url: str) -> None:
    plan = [  # (tool, key, sleep): three finish fast, two are still running at the crash
        ("early_idem", "k1", 0.5),
        ("early_amo", "k2", 0.7),
        ("early_idem", "k3", 0.9),
        ("early_idem", "k4", 3.0),
        ("early_amo", "k5", 4.0),
    ]
    spec = write_agent(
        tmp_path / "parallel.yaml",
        [
            {"tool_calls": [call(tool, key=key, sleep=s) for tool, key, s in plan]},
            {"text": "all five handled"},
        ],
        ["wstools:early_idem", "wstools:early_amo"],
        max_parallel_tools=5,
    )
    ids = [f"call_1_{i}" for i in range(1, 6)]
    async with harness(tmp_path, sqlite_url) as h:
        run_id = h.start(spec)
        first = h.worker(EVERRUNS_CRASH_AT="after:tool.completed#3")
        assert first.wait(30) == KILLED, h.logs()
        before = await h.events(run_id)
        assert sorted(e.data["call_id"] for e in before if e.type == EventType.TOOL_STARTED) == ids
        assert (
            sorted(e.data["call_id"] for e in before if e.type == EventType.TOOL_COMPLETED)
            == ids[:3]
        )
        second = h.worker()
        row = await h.wait_status(run_id, "completed")
        assert row.result == "all five handled"
        events = await h.events(run_id)

        # The journal: the idempotent unfinished call ran again, the at_most_once
        # one was not run again and got the interrupted result.
        for cid in ids[:3]:
            assert [e.type for e in by_call(events, cid)] == [
                EventType.TOOL_STARTED,
                EventType.TOOL_COMPLETED,
            ]
        assert [(e.type, e.data.get("attempt")) for e in by_call(events, "call_1_4")] == [
            (EventType.TOOL_STARTED, 1),
            (EventType.TOOL_STARTED, 2),
            (EventType.TOOL_COMPLETED, None),
        ]
        k5 = by_call(events, "call_1_5")
        assert [e.type for e in k5] == [EventType.TOOL_STARTED, EventType.TOOL_FAILED]
        assert k5[1].data["interrupted"] is True
        assert k5[1].data["error"] == INTERRUPTED_MESSAGE

        # The ledger: every call started once on the first worker; only call_1_4
        # started again, on the second.
        calls: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for entry in h.ledger_entries():
            assert entry["idempotency_key"] == f"{run_id}:{entry['call_id']}"
            calls[entry["call_id"]].append((entry["attempt"], entry["pid"]))
        assert dict(calls) == {
            "call_1_1": [(1, first.pid)],
            "call_1_2": [(1, first.pid)],
            "call_1_3": [(1, first.pid)],
            "call_1_4": [(1, first.pid), (2, second.pid)],
            "call_1_5": [(1, first.pid)],
        }

        # The model saw the results in call order, the interrupted one as an error.
        state = fold(events)
        results = [m for m in transcript(state) if m["role"] == "tool"]
        assert [m["tool_call_id"] for m in results] == ids
        assert [m["is_error"] for m in results] == [False, False, False, False, True]
        assert results[3]["content"] == "early_idem recorded k4"
        h.assert_clean_logs()


# ------------------------------------------------------------------ 3. approvals


async def test_approval_survives_a_fleet_restart_and_deny_reaches_the_model(
    tmp_path: Path, db_url: str
) -> None:
    spec = write_agent(
        tmp_path / "approve.yaml",
        [{"tool_calls": [call("amo_record", key="pay")]}, {"text": "handled"}],
        ["ledgertools:amo_record"],
        approvals={"require_for": ["amo_record"]},
    )
    async with harness(tmp_path, db_url) as h:
        approved, denied = h.start(spec), h.start(spec)
        first = h.worker()
        for run_id in (approved, denied):
            await h.wait_status(run_id, "waiting")
        status = h.status(approved)
        assert (status["status"], status["lease_owner"], status["wake_at"]) == (
            "waiting",
            None,
            None,
        )
        events = await h.events(approved)
        (requested,) = [e for e in events if e.type == EventType.APPROVAL_REQUESTED]
        assert requested.data == {
            "call_id": "call_1_1",
            "name": "amo_record",
            "arguments": {"key": "pay"},
        }
        assert events[-1].type == EventType.RUN_WAITING
        assert events[-1].data == {"reason": "approval", "calls": ["call_1_1"]}
        assert not by_call(events, "call_1_1", EventType.TOOL_STARTED)

        # No worker is needed while a run waits for a human: stop them all.
        assert stop(first) == 0
        second = h.worker()
        bad = h.cli("approve", approved, "call_9_9")
        assert bad.returncode == 1
        assert "no pending approval for call 'call_9_9'" in bad.stderr
        assert "pending: call_1_1" in bad.stderr
        await asyncio.sleep(0.5)
        assert (await h.store.get_run(approved)).status == "waiting"
        assert h.ledger_entries() == []

        assert "approved call_1_1" in h.ok("approve", approved, "call_1_1")
        assert "denied call_1_1" in h.ok("deny", denied, "call_1_1", "--reason", "not today")
        for run_id in (approved, denied):
            row = await h.wait_status(run_id, "completed")
            assert row.result == "handled"

        # Approved: the tool ran exactly once, on the new worker.
        entries = h.ledger_entries()
        assert [(e["idempotency_key"], e["pid"]) for e in entries] == [
            (f"{approved}:call_1_1", second.pid)
        ]
        types = [e.type for e in by_call(await h.events(approved), "call_1_1")]
        assert types == [
            EventType.APPROVAL_REQUESTED,
            EventType.APPROVAL_GRANTED,
            EventType.TOOL_STARTED,
            EventType.TOOL_COMPLETED,
        ]

        # Denied: the model got the human's reason as the tool's (error) result.
        events = await h.events(denied)
        assert [e.type for e in by_call(events, "call_1_1")] == [
            EventType.APPROVAL_REQUESTED,
            EventType.APPROVAL_DENIED,
            EventType.TOOL_FAILED,
        ]
        message = tool_message(fold(events), "call_1_1")
        assert message["content"] == "denied by a human: not today"
        assert message["is_error"] is True
        assert transcript(fold(events))[-1] == {"role": "assistant", "content": "handled"}

        # Deciding again, or on a finished run, is a clear error.
        for command, run_id in (("approve", denied), ("deny", approved)):
            again = h.cli(command, run_id, "call_1_1")
            assert again.returncode == 1, again.stdout
            assert f"run {run_id} has no pending approval for call 'call_1_1'" in again.stderr
            assert "pending: none" in again.stderr
        h.assert_clean_logs()


async def test_approval_landing_while_the_run_parks_is_not_lost(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: an approval journaled between the worker's decision to park
    and its run.waiting append must wake the run, not be slept through forever.

    The race is forced in-process: the store injects the approval just before
    the worker's run.waiting append."""
    monkeypatch.syspath_prepend(str(TOOLING))
    monkeypatch.setenv("EVERRUNS_TEST_LEDGER", str(tmp_path / "ledger.jsonl"))
    monkeypatch.setenv("EVERRUNS_WORKSPACE_ROOT", str(tmp_path / "workspaces"))
    spec = load_spec(
        write_agent(
            tmp_path / "race.yaml",
            [{"tool_calls": [call("amo_record", key="race")]}, {"text": "raced"}],
            ["ledgertools:amo_record"],
            approvals={"require_for": ["amo_record"]},
        )
    )
    store = await Store.open(db_url)
    try:
        run_id = await store.create_run(spec, "go")
        original = store.append
        injected = []

        async def racing_append(rid: str, epoch: int | None, new: Any, **kw: Any) -> Any:
            if epoch is not None and not injected and new and new[0][0] == EventType.RUN_WAITING:
                injected.append(
                    await store.signal(rid, EventType.APPROVAL_GRANTED, {"call_id": "call_1_1"})
                )
            return await original(rid, epoch, new, **kw)

        store.append = racing_append  # type: ignore[method-assign]
        worker = Worker(store, lease_ttl=1, poll_interval=0.05, settings=Settings())
        task = asyncio.create_task(worker.run())
        try:
            deadline = time.monotonic() + 10
            while (row := await store.get_run(run_id)).status != "completed":
                if time.monotonic() > deadline:
                    types = [e.type for e in await store.load_events(run_id)]
                    raise AssertionError(f"stuck in {row.status} (wake_at {row.wake_at}): {types}")
                await asyncio.sleep(0.05)
        finally:
            worker.stop()
            await asyncio.wait_for(task, 15)
        assert injected, "the race was not provoked"
        assert row.result == "raced"
        assert len(read_ledger(tmp_path / "ledger.jsonl")) == 1
    finally:
        await store.close()


# ------------------------------------------------------------------ 4. durable sleep


async def test_sleep_parks_without_a_worker_and_wakes_on_a_new_one(
    tmp_path: Path, db_url: str
) -> None:
    spec = write_agent(
        tmp_path / "sleep.yaml",
        [
            {"tool_calls": [call("sleep", seconds=6, reason="cool down")]},
            {"text": "rested"},
        ],
        [{"builtin": "sleep"}],
        retry={"durable_wait_after": 1},
    )
    async with harness(tmp_path, db_url) as h:
        run_id = h.start(spec)
        first = h.worker()
        await h.wait_status(run_id, "waiting")
        parked_at = time.time()
        stop(first, signal.SIGKILL)  # no worker at all while it sleeps
        events = await h.events(run_id)
        (waiting,) = by_call(events, "call_1_1", EventType.TOOL_WAITING)
        wake_at = waiting.data["wake_at"]
        assert waiting.data["reason"] == "cool down"
        assert wake_at - parked_at > 3  # parked long before it is due
        assert events[-1].type == EventType.RUN_WAITING
        assert events[-1].data == {"reason": "sleep", "wake_at": wake_at}
        status = h.status(run_id)
        assert status["status"] == "waiting" and status["lease_owner"] is None
        assert status["wake_at"] == pytest.approx(wake_at)

        await asyncio.sleep(max(0.0, wake_at - time.time()) + 0.3)
        assert (await h.store.get_run(run_id)).status == "waiting"  # nobody to run it
        h.worker()
        row = await h.wait_status(run_id, "completed")
        assert row.result == "rested"
        events = await h.events(run_id)
        done = result_of(events, "call_1_1")
        iso = datetime.fromtimestamp(wake_at, tz=UTC).isoformat(timespec="seconds")
        assert done.type == EventType.TOOL_COMPLETED
        assert done.data["output"] == f"slept until {iso}"
        assert done.ts >= wake_at
        assert [e.type for e in events].count(EventType.RUN_STARTED) == 2
        assert [e.type for e in events].count(EventType.TOOL_STARTED) == 1  # woken, not re-run
        h.assert_clean_logs()


# ------------------------------------------------------------------ 5. notes


async def test_notes_written_before_a_crash_are_read_after_takeover(
    tmp_path: Path, sqlite_url: str
) -> None:
    spec = write_agent(
        tmp_path / "notes.yaml",
        [
            {"tool_calls": [call("note", text="alpha: fetched the data")]},
            {"tool_calls": [call("note", text="beta: half way")]},
            {"tool_calls": [call("read_notes"), call("notes_probe")]},
            {"text": "oriented"},
        ],
        [{"builtin": "notes"}, "wstools:notes_probe"],
    )
    notes = ["alpha: fetched the data", "beta: half way"]
    async with harness(tmp_path, sqlite_url) as h:
        run_id = h.start(spec)
        first = h.worker(EVERRUNS_CRASH_AT="after:tool.completed#2")
        assert first.wait(30) == KILLED, h.logs()
        assert (await h.state(run_id)).notes == notes
        h.worker()
        await h.wait_status(run_id, "completed")
        events = await h.events(run_id)
        starts = [e for e in events if e.type == EventType.RUN_STARTED]
        assert [e.data["takeover"] for e in starts] == [False, True]
        assert [e.data["note"] for e in events if e.data.get("note")] == notes
        assert result_of(events, "call_3_1").data["output"] == (
            "1. alpha: fetched the data\n2. beta: half way"
        )
        assert h.ledger_entries("notes_probe")[0]["notes"] == notes
        assert (await h.state(run_id)).notes == notes
        h.assert_clean_logs()


# ------------------------------------------------------------------ 6. validation, timeouts, output


async def test_bad_arguments_timeouts_and_truncated_output(tmp_path: Path, sqlite_url: str) -> None:
    content = "\n".join(f"row {i:04d} " + "x" * 40 for i in range(100))
    spec = write_agent(
        tmp_path / "limits.yaml",
        [
            {
                "tool_calls": [
                    call("idem_record", key="k", sleep="soon"),
                    call("idem_record", sleep=0),
                    call("nap", seconds=5),
                    call("big", size=50_000),
                ]
            },
            {
                "tool_calls": [
                    call("write_file", path="big.txt", content=content),
                    call("idem_record", key="fine"),
                ]
            },
            {"tool_calls": [call("read_file", path="big.txt")]},
            {"text": "checked"},
        ],
        [
            "ledgertools:idem_record",
            {"python": "wstools:nap", "timeout": 1},
            "wstools:big",
            {"builtin": "workspace", "options": {"max_output_chars": 1000}},
        ],
    )
    async with harness(tmp_path, sqlite_url) as h:
        run_id = h.start(spec)
        h.worker()
        row = await h.wait_status(run_id, "completed")
        assert row.result == "checked"  # every failure went to the model; the run went on
        events = await h.events(run_id)
        state = fold(events)

        # Schema validation names the argument; the tool never ran.
        wrong_type = result_of(events, "call_1_1")
        assert wrong_type.type == EventType.TOOL_FAILED
        assert wrong_type.data["error"].startswith("invalid arguments for idem_record: sleep: ")
        assert "valid number" in wrong_type.data["error"]
        missing = result_of(events, "call_1_2")
        assert missing.data["error"] == "invalid arguments for idem_record: key: Field required"
        assert [e["key"] for e in h.ledger_entries("idem_record")] == ["fine"]

        # The per-tool timeout stops the call.
        timed_out = result_of(events, "call_1_3")
        (nap_started,) = by_call(events, "call_1_3", EventType.TOOL_STARTED)
        assert timed_out.type == EventType.TOOL_FAILED
        assert timed_out.data["error"] == "timed out after 1s"
        assert 0.9 <= timed_out.ts - nap_started.ts < 4
        assert [e["at"] for e in h.ledger_entries("nap")] == ["start"]

        # Output truncation: the journal keeps everything, the model sees the head.
        for cid, size, limit in (("call_1_4", 50_000, 20_000), ("call_3_1", len(content), 1000)):
            done = result_of(events, cid)
            assert done.type == EventType.TOOL_COMPLETED
            output = done.data["output"]
            assert len(output) == size and done.data["max_output"] == limit
            seen = tool_message(state, cid)["content"]
            assert seen == output[:limit] + TRUNCATION_MARKER.format(shown=limit, total=size)
            assert f"output truncated: {limit} of {size} characters shown" in seen
        assert result_of(events, "call_3_1").data["output"] == content
        assert "max_output" not in result_of(events, "call_2_2").data
        h.assert_clean_logs()


# ------------------------------------------------------------------ 7. user messages


async def test_messages_while_parked_and_after_completion(tmp_path: Path, sqlite_url: str) -> None:
    spec = write_agent(
        tmp_path / "messages.yaml",
        [
            {"tool_calls": [call("amo_record", key="ship")]},
            {"text": "shipped, and hurrying"},
            {"text": "second turn done"},
        ],
        ["ledgertools:amo_record"],
        approvals={"require_for": ["amo_record"]},
    )
    async with harness(tmp_path, sqlite_url) as h:
        run_id = h.start(spec)
        h.worker()
        await h.wait_status(run_id, "waiting")
        said = h.ok("message", run_id, "also, hurry up")
        seq = int(said.split(" seq ")[1].split()[0])
        # The message wakes the run; it is parked again because the approval is pending.
        await h.wait(
            run_id,
            lambda r: r.status == "waiting" and r.last_seq >= seq + 2 and r.lease_owner is None,
            "the run to park again after the message",
        )
        events = await h.events(run_id)
        assert events[-1].type == EventType.RUN_WAITING and events[-1].data["reason"] == "approval"
        assert [e.type for e in events].count(EventType.LLM_STARTED) == 1  # not answered yet
        assert h.ledger_entries() == []

        h.ok("approve", run_id, "call_1_1")
        row = await h.wait_status(run_id, "completed")
        assert row.result == "shipped, and hurrying"
        state = await h.state(run_id)
        assert [(m["role"], m.get("content")) for m in transcript(state)] == [
            ("user", "go"),
            ("assistant", None),
            ("tool", "amo_record recorded ship"),
            ("user", "also, hurry up"),
            ("assistant", "shipped, and hurrying"),
        ]

        # A message to a completed run starts a new turn.
        h.ok("message", run_id, "one more thing")
        row = await h.wait(
            run_id,
            lambda r: r.status == "completed" and r.result == "second turn done",
            "the second turn",
        )
        state = await h.state(run_id)
        assert [(m["role"], m.get("content")) for m in transcript(state)][-2:] == [
            ("user", "one more thing"),
            ("assistant", "second turn done"),
        ]
        assert row.steps == 3
        assert len(h.ledger_entries()) == 1
        h.assert_clean_logs()
