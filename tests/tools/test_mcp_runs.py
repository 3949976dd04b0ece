"""Runs whose tools are real MCP servers, executed by real `everruns worker` processes.

The servers are the reference ones of tests/tools/test_mcp.py (loopback only):
`mcp-server-time` (.venv/bin/mcp-server-time, stdio) and
`@modelcontextprotocol/server-everything` (stdio, and streamable HTTP on a free
127.0.0.1 port at `/mcp`), installed by test_mcp's `everything_js` fixture.

Covered:
1. one run calling tools of all three servers/transports end to end, each
   server's tool list journaled once (`tools.listed`);
2. a worker SIGKILLed right after the first listing (EVERRUNS_CRASH_AT): the run
   resumed on another worker lists only what was not journaled yet;
3. a worker SIGKILLed while MCP calls of each effect class are in flight:
   pure/idempotent calls are made again (attempt 2, same idempotency key),
   the at_most_once call is not (the model sees INTERRUPTED_MESSAGE);
   the stdio server process SIGKILLed between calls and during calls: the next
   call restarts it transparently (an in-flight pure call is resent, an
   in-flight at_most_once call fails as "connection lost");
4. schema-invalid arguments: tool.failed naming the argument, the run goes on;
5. invalid MCP configuration: `everruns run` exits 2 naming `tools[0].mcp`; an
   unreachable server fails the run with reason `mcp_unavailable`;
6. two different servers whose display labels coincide (command lines that
   share their first 80 characters; one relative command in two `cwd`s) each
   get their own journaled tool list.

Every stdio server gets a per-test `EVERRUNS_TEST_TAG` in its environment, so
the test can find its processes (to kill them, and to check that none outlive
their workers, SIGKILLed or not).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_mcp import EverythingHTTP, everything_http, everything_js  # noqa: F401  (fixtures)

from everruns.cli import load_checked as _load_checked
from everruns.core.events import INTERRUPTED_MESSAGE, TERMINAL_EVENTS, Event, EventType
from everruns.core.state import fold, transcript
from everruns.spec import SpecError, load_spec
from everruns.store import Store
from helpers import cli, env_for, start_worker, stop, write_agent

pytestmark = pytest.mark.timeout(60)

WORKER_ARGS = ("--lease-ttl", "1", "--poll-interval", "0.1")
TAG_ENV = "EVERRUNS_TEST_TAG"
SLOW_TOOL = "trigger-long-running-operation"
SLOW = {"duration": 2, "steps": 2}
SLOW_TEXT = "Long running operation completed. Duration: 2 seconds, Steps: 2."
IN_FLIGHT = 0.5  # seconds into a SLOW call at which something is killed


# ------------------------------------------------------------------ servers and processes


def time_command() -> list[str]:
    exe = Path(sys.executable).parent / "mcp-server-time"
    if not exe.exists():
        pytest.fail(f"mcp-server-time is not installed next to {sys.executable}")
    return [str(exe)]


def everything_command(entry: Path) -> list[str]:
    return ["node", str(entry), "stdio"]


def tagged_pids(tag: str) -> list[int]:
    """Live processes whose environment carries EVERRUNS_TEST_TAG=tag (Linux /proc)."""
    needle = f"{TAG_ENV}={tag}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle in f.read().split(b"\0") and alive(int(entry)):
                    found.append(int(entry))
        except OSError:
            continue
    return found


def parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def servers_of(tag: str, worker: subprocess.Popen[bytes]) -> list[int]:
    return sorted(p for p in tagged_pids(tag) if parent_of(p) == worker.pid)


@pytest.fixture
def tag() -> Iterator[str]:
    """A tag for this test's stdio servers; afterwards none of them may be left running."""
    value = uuid.uuid4().hex
    yield value
    deadline = time.monotonic() + 5
    while (left := tagged_pids(value)) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in left:  # clean up, then fail
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not left, f"MCP server processes outlived their workers: {left}"


def log_tail(path: Path, lines: int = 60) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def assert_clean_log(log: Path) -> None:
    text = log.read_text(errors="replace") if log.exists() else ""
    assert " ERROR " not in text and "Traceback" not in text, f"worker logged errors:\n{text}"


async def wait_for(
    store: Store,
    run_id: str,
    done: Callable[[list[Event]], bool],
    proc: subprocess.Popen[bytes],
    log: Path,
    what: str,
    timeout: float = 40,
) -> list[Event]:
    """Poll the journal until `done(events)`; fail early if the worker exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = await store.load_events(run_id)
        if done(events):
            return events
        if proc.poll() is not None:
            raise AssertionError(
                f"worker exited with {proc.returncode} before {what}\n"
                f"{[e.type for e in events]}\n{log_tail(log)}"
            )
        await asyncio.sleep(0.05)
    events = await store.load_events(run_id)
    raise AssertionError(
        f"timed out waiting for {what}: {[e.type for e in events]}\n{log_tail(log)}"
    )


def ended(events: list[Event]) -> bool:
    return any(e.type in TERMINAL_EVENTS for e in events)


def started_all(*call_ids: str) -> Callable[[list[Event]], bool]:
    def check(events: list[Event]) -> bool:
        started = {e.data["call_id"] for e in events if e.type == EventType.TOOL_STARTED}
        return set(call_ids) <= started

    return check


def completed(call_id: str) -> Callable[[list[Event]], bool]:
    def check(events: list[Event]) -> bool:
        return any(
            e.type == EventType.TOOL_COMPLETED and e.data["call_id"] == call_id for e in events
        )

    return check


async def run_once(url: str, spec_path: Path, tmp: Path, **env: str) -> list[Event]:
    """Create a run of the spec, execute it on one worker process, return its journal."""
    log = tmp / "worker.log"
    store = await Store.open(url)
    try:
        run_id = await store.create_run(load_spec(spec_path), "go")
        proc = start_worker(env_for(url, **env), *WORKER_ARGS, log=log)
        try:
            events = await wait_for(store, run_id, ended, proc, log, "the run to end")
        finally:
            assert stop(proc) == 0, log_tail(log)
    finally:
        await store.close()
    assert_clean_log(log)
    return events


def by_type(events: list[Event], kind: str) -> list[Event]:
    return [e for e in events if e.type == kind]


def tool_starts(events: list[Event], call_id: str) -> list[Event]:
    return [e for e in by_type(events, EventType.TOOL_STARTED) if e.data["call_id"] == call_id]


def tool_messages(events: list[Event]) -> dict[str, dict[str, Any]]:
    """call id -> the tool message the model saw."""
    state = fold(events)
    return {m["tool_call_id"]: m for m in transcript(state) if m["role"] == "tool"}


def call(call_id: str, name: str, **arguments: Any) -> dict[str, Any]:
    return {"id": call_id, "name": name, "arguments": arguments}


def everything_entry(entry: Path, tag: str, **fields: Any) -> dict[str, Any]:
    effect = fields.pop("effect", None)
    tool: dict[str, Any] = {
        "mcp": {"command": everything_command(entry), "env": {TAG_ENV: tag}, **fields}
    }
    if effect is not None:
        tool["effect"] = effect
    return tool


# ------------------------------------------------------------------ 1. three servers


async def test_run_calls_stdio_and_http_servers(
    sqlite_url: str,
    tmp_path: Path,
    tag: str,
    everything_js: Path,  # noqa: F811
    everything_http: EverythingHTTP,  # noqa: F811
) -> None:
    tools = [
        {"mcp": {"command": time_command(), "env": {TAG_ENV: tag}}, "effect": "pure"},
        everything_entry(everything_js, tag, include=["echo", "get-sum"]),
        {
            "mcp": {
                "url": everything_http.url,
                "tool_prefix": "http_",
                "include": ["echo", "get-sum"],
                "headers": {"X-Everruns-Test": "1"},
            },
            "effect": "idempotent",
        },
    ]
    responses = [
        {
            "tool_calls": [
                call("c_time", "get_current_time", timezone="UTC"),
                call("c_echo", "echo", message="over stdio"),
                call("c_sum", "get-sum", a=2, b=40),
                call("c_http_echo", "http_echo", message="over http"),
                call("c_http_sum", "http_get-sum", a=-1, b=1.5),
            ]
        },
        {"tool_calls": [call("c_again", "http_echo", message="second step")]},
        {"text": "all servers answered"},
    ]
    spec = write_agent(tmp_path / "agent.yaml", responses, tools=tools, name="mcp-three")
    log = tmp_path / "worker.log"
    store = await Store.open(sqlite_url)
    try:
        run_id = await store.create_run(load_spec(spec), "go")
        proc = start_worker(env_for(sqlite_url), *WORKER_ARGS, log=log)
        try:
            events = await wait_for(store, run_id, ended, proc, log, "the run to end")
            # The worker keeps one connection per server: both stdio servers are its children.
            assert len(servers_of(tag, proc)) == 2
        finally:
            assert stop(proc) == 0, log_tail(log)
        row = await store.get_run(run_id)
    finally:
        await store.close()
    assert_clean_log(log)

    assert row.status == "completed" and row.result == "all servers answered", row.error
    listed = by_type(events, EventType.TOOLS_LISTED)
    assert len(listed) == 3, [e.data["server"] for e in listed]
    # Each list names its server in full; `env`/`headers` only as a digest.
    servers = [e.data["server"] for e in listed]
    assert servers[0].startswith(f"{time_command()[0]} [") and tag not in servers[0]
    assert servers[1].startswith(f"node {everything_js} stdio [")
    assert servers[2].startswith(f"{everything_http.url} [") and "Everruns" not in servers[2]
    names = [{t["name"] for t in e.data["tools"]} for e in listed]
    assert {"get_current_time", "convert_time"} <= names[0]
    assert {"echo", "get-sum", SLOW_TOOL} <= names[1] == names[2]
    # Listed after run.started, before the first LLM call, never again.
    assert by_type(events, EventType.RUN_STARTED)[0].seq < listed[0].seq
    assert listed[-1].seq < by_type(events, EventType.LLM_STARTED)[0].seq

    results = tool_messages(events)
    assert not any(m["is_error"] for m in results.values()), results
    now = json.loads(results["c_time"]["content"])
    assert now["timezone"] == "UTC" and now["datetime"]
    assert results["c_echo"]["content"] == "Echo: over stdio"
    assert results["c_sum"]["content"] == "The sum of 2 and 40 is 42."
    assert results["c_http_echo"]["content"] == "Echo: over http"
    assert results["c_http_sum"]["content"] == "The sum of -1 and 1.5 is 0.5."
    assert results["c_again"]["content"] == "Echo: second step"
    effects = {e.data["call_id"]: e.data["effect"] for e in by_type(events, EventType.TOOL_STARTED)}
    assert effects == {
        "c_time": "pure",
        "c_echo": "at_most_once",
        "c_sum": "at_most_once",
        "c_http_echo": "idempotent",
        "c_http_sum": "idempotent",
        "c_again": "idempotent",
    }


# ------------------------------------------------------------------ 2. resumed run


@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def test_resumed_run_reuses_the_journaled_listing(
    db: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    tag: str,
    everything_js: Path,  # noqa: F811
    everything_http: EverythingHTTP,  # noqa: F811
) -> None:
    url = str(request.getfixturevalue("pg_url" if db == "postgres" else "sqlite_url"))
    tools = [
        everything_entry(everything_js, tag, include=["get-sum"]),
        {"mcp": {"url": everything_http.url, "include": ["echo"]}},
    ]
    responses = [
        {"tool_calls": [call("c_sum", "get-sum", a=20, b=22), call("c_echo", "echo", message="x")]},
        {"text": "resumed fine"},
    ]
    spec = write_agent(tmp_path / "agent.yaml", responses, tools=tools, name="mcp-resume")
    logs = [tmp_path / "worker1.log", tmp_path / "worker2.log"]
    store = await Store.open(url)
    try:
        run_id = await store.create_run(load_spec(spec), "go")
        env = env_for(url)
        # Worker 1 lists the first server, journals it, and dies.
        crashing = start_worker(
            {**env, "EVERRUNS_CRASH_AT": "after:tools.listed"}, *WORKER_ARGS, log=logs[0]
        )
        try:
            code = crashing.wait(40)
        except subprocess.TimeoutExpired:
            crashing.kill()
            crashing.wait()
            raise AssertionError(f"crash point never reached\n{log_tail(logs[0])}") from None
        assert code == -signal.SIGKILL, f"worker 1 exited {code}\n{log_tail(logs[0])}"
        before = await store.load_events(run_id)
        assert [e.type for e in before] == ["run.created", "run.started", "tools.listed"]

        recovering = start_worker(env, *WORKER_ARGS, log=logs[1])
        try:
            events = await wait_for(store, run_id, ended, recovering, logs[1], "the end")
        finally:
            assert stop(recovering) == 0, log_tail(logs[1])
        row = await store.get_run(run_id)
    finally:
        await store.close()
    assert_clean_log(logs[1])

    assert events[: len(before)] == before
    assert row.status == "completed" and row.result == "resumed fine", row.error
    starts = by_type(events, EventType.RUN_STARTED)
    assert [e.data["takeover"] for e in starts] == [False, True]
    # The resumed run listed only the server that was not journaled yet.
    listed = by_type(events, EventType.TOOLS_LISTED)
    assert [e.data["server"] for e in listed][1:] == [everything_http.url]
    assert listed[0] == before[-1] and listed[1].seq > starts[1].seq
    results = tool_messages(events)
    assert results["c_sum"]["content"] == "The sum of 20 and 22 is 42."
    assert results["c_echo"]["content"] == "Echo: x"


# ------------------------------------------------------------------ 3. crashes mid-call


async def test_worker_killed_during_mcp_calls(
    sqlite_url: str,
    tmp_path: Path,
    tag: str,
    everything_js: Path,  # noqa: F811
) -> None:
    """Three slow calls in flight, one per effect class, when the worker is SIGKILLed."""
    tools = [
        everything_entry(everything_js, tag, include=[SLOW_TOOL, "echo"], effect="pure"),
        everything_entry(
            everything_js, tag, include=[SLOW_TOOL], effect="idempotent", tool_prefix="idem_"
        ),
        everything_entry(
            everything_js, tag, include=[SLOW_TOOL], effect="at_most_once", tool_prefix="amo_"
        ),
    ]
    by_effect = {"c_pure": "pure", "c_idem": "idempotent", "c_amo": "at_most_once"}
    responses = [
        {
            "tool_calls": [
                call("c_pure", SLOW_TOOL, **SLOW),
                call("c_idem", f"idem_{SLOW_TOOL}", **SLOW),
                call("c_amo", f"amo_{SLOW_TOOL}", **SLOW),
            ]
        },
        {"tool_calls": [call("c_echo", "echo", message="after the crash")]},
        {"text": "survived"},
    ]
    spec = write_agent(tmp_path / "agent.yaml", responses, tools=tools, name="mcp-effects")
    logs = [tmp_path / "worker1.log", tmp_path / "worker2.log"]
    store = await Store.open(sqlite_url)
    try:
        run_id = await store.create_run(load_spec(spec), "go")
        env = env_for(sqlite_url)
        first = start_worker(env, *WORKER_ARGS, log=logs[0])
        try:
            await wait_for(
                store, run_id, started_all(*by_effect), first, logs[0], "the calls to start"
            )
            await asyncio.sleep(IN_FLIGHT)  # the calls are on the wire, the servers working
            assert len(servers_of(tag, first)) == 3  # one connection per effect class
            first.kill()
            assert first.wait(10) == -signal.SIGKILL
        finally:
            if first.poll() is None:
                first.kill()
                first.wait()
        before = await store.load_events(run_id)
        assert [e.type for e in before[-3:]] == [EventType.TOOL_STARTED] * 3, before

        second = start_worker(env, *WORKER_ARGS, log=logs[1])
        try:
            events = await wait_for(store, run_id, ended, second, logs[1], "the end")
        finally:
            assert stop(second) == 0, log_tail(logs[1])
        row = await store.get_run(run_id)
    finally:
        await store.close()
    assert_clean_log(logs[1])

    assert events[: len(before)] == before
    assert row.status == "completed" and row.result == "survived", row.error
    # One listing, by worker 1; the resumed run reuses it.
    assert len(by_type(events, EventType.TOOLS_LISTED)) == 1
    assert len(by_type(events, EventType.RUN_STARTED)) == 2
    results = tool_messages(events)
    for call_id, effect in by_effect.items():
        starts = tool_starts(events, call_id)
        assert {e.data["idempotency_key"] for e in starts} == {f"{run_id}:{call_id}"}
        assert {e.data["effect"] for e in starts} == {effect}
        if effect == "at_most_once":
            assert [e.data["attempt"] for e in starts] == [1], call_id
            (failed,) = [
                e for e in by_type(events, EventType.TOOL_FAILED) if e.data["call_id"] == call_id
            ]
            assert failed.data["interrupted"] is True and failed.seq > len(before)
            assert results[call_id] == {
                "role": "tool",
                "tool_call_id": call_id,
                "name": f"amo_{SLOW_TOOL}",
                "content": INTERRUPTED_MESSAGE,
                "is_error": True,
            }
        else:
            assert [e.data["attempt"] for e in starts] == [1, 2], call_id
            assert starts[1].seq > len(before)
            assert results[call_id]["content"] == SLOW_TEXT
            assert not results[call_id]["is_error"]
    assert results["c_echo"]["content"] == "Echo: after the crash"


async def test_mcp_server_killed_mid_run(
    sqlite_url: str,
    tmp_path: Path,
    tag: str,
    everything_js: Path,  # noqa: F811
) -> None:
    """The stdio servers are SIGKILLed between two calls, then during calls."""
    tools = [
        everything_entry(everything_js, tag, include=[SLOW_TOOL, "echo"]),  # at_most_once
        everything_entry(
            everything_js, tag, include=[SLOW_TOOL, "echo"], effect="pure", tool_prefix="p_"
        ),
    ]
    responses = [
        {"tool_calls": [call("c1", "echo", message="one")]},
        # The second server starts here, so that both are up when step 3 calls them.
        {
            "tool_calls": [call("c2", "echo", message="two"), call("c2p", "p_echo", message="2")],
            "delay": 1.5,
        },
        {
            "tool_calls": [
                call("c3_amo", SLOW_TOOL, **SLOW),
                call("c3_pure", f"p_{SLOW_TOOL}", **SLOW),
            ]
        },
        {"tool_calls": [call("c4", "echo", message="three")]},
        {"text": "done"},
    ]
    spec = write_agent(tmp_path / "agent.yaml", responses, tools=tools, name="mcp-server-dies")
    log = tmp_path / "worker.log"
    store = await Store.open(sqlite_url)
    try:
        run_id = await store.create_run(load_spec(spec), "go")
        proc = start_worker(env_for(sqlite_url), *WORKER_ARGS, log=log)
        try:
            # Between calls: the (only) server is killed while the model "thinks" about step 2.
            await wait_for(store, run_id, completed("c1"), proc, log, "c1")
            (first,) = servers_of(tag, proc)
            os.kill(first, signal.SIGKILL)
            # During calls: both servers are killed 0.5 s into their 2 s operations.
            await wait_for(store, run_id, started_all("c3_amo", "c3_pure"), proc, log, "c3")
            await asyncio.sleep(IN_FLIGHT)
            second = servers_of(tag, proc)
            assert len(second) == 2 and first not in second, (first, second)
            for pid in second:
                os.kill(pid, signal.SIGKILL)
            events = await wait_for(store, run_id, ended, proc, log, "the run to end")
            third = servers_of(tag, proc)
            # Both restarted once more: the pure call's resend, the at_most_once one's next call.
            assert len(third) == 2 and not {first, *second} & set(third), (first, second, third)
        finally:
            assert stop(proc) == 0, log_tail(log)
        row = await store.get_run(run_id)
    finally:
        await store.close()

    assert row.status == "completed" and row.result == "done", row.error
    assert len(by_type(events, EventType.TOOLS_LISTED)) == 1
    assert len(by_type(events, EventType.RUN_STARTED)) == 1
    assert {e.data["attempt"] for e in by_type(events, EventType.TOOL_STARTED)} == {1}
    results = tool_messages(events)
    assert results["c1"]["content"] == "Echo: one"
    # The server was known to be dead before c2 was sent: restarted transparently.
    assert results["c2"] == {**results["c1"], "tool_call_id": "c2", "content": "Echo: two"}
    assert results["c2p"]["content"] == "Echo: 2"
    # Sent, then the server died: it may have run, so the at_most_once call is not resent ...
    assert results["c3_amo"]["is_error"]
    message = results["c3_amo"]["content"]
    assert f"server connection was lost during {SLOW_TOOL}" in message, message
    assert "was not retried" in message and "server process" in message, message
    # ... while the pure one is resent on a new session, within the same attempt.
    assert results["c3_pure"]["content"] == SLOW_TEXT and not results["c3_pure"]["is_error"]
    assert results["c4"]["content"] == "Echo: three" and not results["c4"]["is_error"]
    assert "Traceback" not in log.read_text(errors="replace")


# ------------------------------------------------------------------ 4. invalid arguments


async def test_invalid_arguments_fail_the_call_not_the_run(
    sqlite_url: str,
    tmp_path: Path,
    tag: str,
    everything_js: Path,  # noqa: F811
) -> None:
    tools = [everything_entry(everything_js, tag)]
    responses = [
        {
            "tool_calls": [
                call("c_bad", "get-sum", a=1, b="two"),
                call("c_missing", "echo"),
                call("c_ok", "echo", message="fine"),
            ]
        },
        {"tool_calls": [call("c_fixed", "get-sum", a=1, b=2)]},
        {"text": "recovered"},
    ]
    spec = write_agent(tmp_path / "agent.yaml", responses, tools=tools, name="mcp-bad-args")
    events = await run_once(sqlite_url, spec, tmp_path)
    state = fold(events)
    assert state.status == "completed" and state.result == "recovered", state.error
    failed = {e.data["call_id"]: e.data["error"] for e in by_type(events, EventType.TOOL_FAILED)}
    assert set(failed) == {"c_bad", "c_missing"}
    assert failed["c_bad"].startswith("invalid arguments for get-sum: b: 'two' is not of type")
    assert "'message' is a required property" in failed["c_missing"]
    results = tool_messages(events)
    assert results["c_bad"]["is_error"] and results["c_bad"]["content"] == failed["c_bad"]
    assert results["c_ok"]["content"] == "Echo: fine"
    assert results["c_fixed"]["content"] == "The sum of 1 and 2 is 3."


# ------------------------------------------------------------------ 5. bad configuration


def test_bad_mcp_config_is_rejected_before_the_run(sqlite_url: str, tmp_path: Path) -> None:
    env = env_for(sqlite_url)
    both = {"mcp": {"command": ["srv"], "url": "http://127.0.0.1:9/mcp"}}
    spec = write_agent(tmp_path / "both.yaml", [{"text": "x"}], tools=[both], name="both")
    done = cli("run", str(spec), "-i", "go", env=env)
    assert done.returncode == 2, (done.stdout, done.stderr)
    message = " ".join(done.stderr.split())
    assert (
        "tools[0].mcp: an MCP server needs exactly one of `command` (stdio) or `url` "
        "(streamable HTTP)" in message
    ), done.stderr
    listed = cli("ls", "--json", env=env)  # the refused spec left no database behind
    assert listed.returncode == 3 and "no database at" in listed.stderr, listed.stderr

    # The same check (`everruns run/start/validate` share it), in process, on other mistakes.
    cases = {
        "tools[0].mcp: an MCP server needs exactly one of": {"mcp": {}},
        "tools[0].mcp.comand: Extra inputs are not permitted": {"mcp": {"comand": ["srv"]}},
        "tools[0].mcp.timeout: 'soon' is not a duration": {
            "mcp": {"url": "http://127.0.0.1:9/mcp", "timeout": "soon"}
        },
        "tools[0].mcp.url: `url` must be an http:// or https:// URL": {"mcp": {"url": "x"}},
        "tools[0].mcp: `headers` applies only to `url` servers": {
            "mcp": {"command": ["srv"], "headers": {"a": "b"}}
        },
    }
    for expected, entry in cases.items():
        path = write_agent(tmp_path / "bad.yaml", [{"text": "x"}], tools=[entry], name="bad")
        with pytest.raises(SpecError) as info:
            asyncio.run(_load_checked(path))
        assert expected in str(info.value), (entry, str(info.value))


def test_unreachable_mcp_server_fails_the_run_clearly(sqlite_url: str, tmp_path: Path) -> None:
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/mcp"
    spec = write_agent(
        tmp_path / "agent.yaml",
        [{"text": "never"}],
        tools=[{"mcp": {"url": url, "connect_timeout": "5s"}}],
        name="mcp-down",
    )
    done = cli("run", str(spec), "--json", "-i", "go", env=env_for(sqlite_url))
    assert done.returncode == 1, (done.stdout, done.stderr)
    failed = [json.loads(x) for x in done.stdout.splitlines() if '"run.failed"' in x]
    assert len(failed) == 1, done.stdout
    assert failed[0]["data"]["reason"] == "mcp_unavailable"
    assert url in failed[0]["data"]["error"] and "ConnectError" in failed[0]["data"]["error"]


# ------------------------------------------------------------------ 6. listing identity


@pytest.mark.parametrize("how", ["long-common-prefix", "same-command-other-cwd"])
async def test_each_server_gets_its_own_listing(
    how: str,
    sqlite_url: str,
    tmp_path: Path,
    tag: str,
    everything_js: Path,  # noqa: F811
) -> None:
    """Two different servers whose display labels coincide: command lines shortened to
    80 characters (two `docker run -i --rm -e ... <image>` servers differing only in the
    image), or the same relative command in different `cwd`s (`[uv, run, server.py]`).
    Each must be listed on its own, not handed the other's journaled tool list."""
    first = everything_command(everything_js)
    second = time_command()
    if how == "long-common-prefix":
        wrapper = ["/usr/bin/env", f"EVERRUNS_PADDING={'x' * 80}"]
        commands = [{"command": [*wrapper, *first]}, {"command": [*wrapper, *second]}]
    else:
        commands = []
        for name, argv in (("a", first), ("b", second)):
            folder = tmp_path / name
            folder.mkdir()
            script = folder / "server"
            script.write_text(f"#!/bin/sh\nexec {' '.join(argv)}\n")
            script.chmod(0o755)
            commands.append({"command": ["./server"], "cwd": str(folder)})
    tools = [
        {"mcp": {**commands[0], "env": {TAG_ENV: tag}, "include": ["echo"]}},
        {"mcp": {**commands[1], "env": {TAG_ENV: tag}, "include": ["get_current_time"]}},
    ]
    responses = [
        {
            "tool_calls": [
                call("c_echo", "echo", message="hi"),
                call("c_time", "get_current_time", timezone="UTC"),
            ]
        },
        {"text": "both"},
    ]
    spec = write_agent(tmp_path / "agent.yaml", responses, tools=tools, name="mcp-labels")
    # The wrapper scripts name node's entry point where the sandbox cannot see it (inside
    # the script): the operator makes the installed package readable to tools.
    settings = tmp_path / "settings.yaml"
    settings.write_text(f"sandbox_read_only: [{json.dumps(str(everything_js.parents[3]))}]\n")
    events = await run_once(sqlite_url, spec, tmp_path, EVERRUNS_SETTINGS=str(settings))
    state = fold(events)
    assert state.status == "completed", state.error
    listed = by_type(events, EventType.TOOLS_LISTED)
    assert len(listed) == 2, [e.data["server"] for e in listed]
    assert "echo" in {t["name"] for t in listed[0].data["tools"]}
    assert "get_current_time" in {t["name"] for t in listed[1].data["tools"]}
    results = tool_messages(events)
    assert results["c_echo"]["content"] == "Echo: hi"
    assert json.loads(results["c_time"]["content"])["timezone"] == "UTC"
