#!/usr/bin/env python3
"""Kill a worker in the middle of an agent run and watch another one finish it.

What happens (offline, about 15 seconds, run with `make demo`):

1. `everruns start` queues a run of the researcher agent (examples/agents/researcher.yaml).
   Its model is scripted, so no network or API key is needed.
2. `everruns worker --lease-ttl 2` picks the run up. We follow its journal with
   `everruns events RUN_ID --follow --json`.
3. Once the first tool results are journaled, we SIGKILL the worker: no cleanup,
   no goodbye, exactly like a crashed machine.
4. A second worker waits for the dead worker's lease to expire (2 s), claims the run
   with a higher epoch, and continues from the journal.
5. We check that nothing that had finished was done again.

Every command is the plain CLI, so you can repeat the demo by hand. The agent's tools
(examples/research_tools.py) are found through PYTHONPATH, which this script sets to
examples/; by hand, from the repo root:

    export EVERRUNS_DATABASE_URL=sqlite:///.everruns/demo.db PYTHONPATH=examples
    .venv/bin/everruns start examples/agents/researcher.yaml --input "Survey durable execution"
    .venv/bin/everruns worker --lease-ttl 2        # in another terminal; Ctrl-C or kill -9 it
    .venv/bin/everruns events RUN_ID --follow

Only the standard library is used here: everything goes through the `everruns` CLI.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
SPEC = EXAMPLES / "agents" / "researcher.yaml"
EVERRUNS = str(Path(sys.executable).parent / "everruns")  # the CLI of this virtualenv

SCRIPTED_STEPS = 4  # researcher.yaml scripts 4 model responses
KILL_AFTER_TOOL_RESULTS = 4  # list_documents + the 3 parallel read_document calls
TIMEOUT = 90.0  # seconds; the demo normally takes ~15

T0 = time.time()


def say(text: str = "") -> None:
    print(text, flush=True)


def banner(text: str) -> None:
    say()
    say(f"=== {text} " + "=" * max(0, 70 - len(text)))


def everruns(*args: str, env: dict[str, str]) -> str:
    """Run one `everruns` command, return its stdout (stop the demo if it fails)."""
    proc = subprocess.run([EVERRUNS, *args], env=env, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"`everruns {' '.join(args)}` failed ({proc.returncode}):\n{proc.stderr}")
    return proc.stdout


def start_worker(name: str, env: dict[str, str], log_dir: Path) -> subprocess.Popen[bytes]:
    with open(log_dir / f"demo-{name}.log", "wb") as log:  # the worker keeps its own copy
        proc = subprocess.Popen(
            [EVERRUNS, "worker", "--lease-ttl", "2"], env=env, cwd=ROOT, stdout=log, stderr=log
        )
    say(f"[{elapsed()}] started {name}: `everruns worker --lease-ttl 2` (pid {proc.pid})")
    return proc


def elapsed(ts: float | None = None) -> str:
    """Seconds since the demo started (of a journal timestamp, or of now)."""
    return f"{(ts or time.time()) - T0:5.1f}s"


def short(value: object, width: int = 70) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def describe(event: dict) -> str:
    """One line per journal event (`everruns events RUN_ID` prints a similar view)."""
    kind, data = event["type"], event["data"]
    if kind == "run.started":
        takeover = "  <-- TAKEOVER after the crash" if data.get("takeover") else ""
        return f"worker {data['worker']} holds the run, epoch {data['epoch']}{takeover}"
    if kind == "llm.started":
        return f"model call for step {data['step']} (attempt {data['attempt']})"
    if kind == "llm.completed":
        message = data["message"]
        calls = ", ".join(c["name"] for c in message.get("tool_calls") or [])
        return short(message.get("content") or "") + (f"  -> {calls}" if calls else "")
    if kind in ("tool.started", "tool.completed", "tool.failed"):
        detail = {
            "tool.started": f"({data.get('effect')})",
            "tool.completed": "-> " + short(data.get("output", ""), 50),
            "tool.failed": "FAILED " + short(data.get("error", ""), 50),
        }[kind]
        return f"{data['name']} [{data['call_id']}] {detail}"
    if kind == "run.created":
        return f"input: {data.get('input')!r}"
    return short(data.get("result") or data.get("error") or data)


def show(event: dict) -> None:
    say(f"[{elapsed(event['ts'])}] {event['seq']:>3} {event['type']:<15} {describe(event)}")


def follow(run_id: str, env: dict[str, str]) -> tuple[subprocess.Popen[str], queue.Queue]:
    """`everruns events RUN_ID --follow --json` in the background, one event per line."""
    proc = subprocess.Popen(
        [EVERRUNS, "events", run_id, "--follow", "--json"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(json.loads(line))
        lines.put(None)  # the follower ended

    threading.Thread(target=pump, daemon=True).start()
    return proc, lines


def verify(events: list[dict], report: Path) -> list[tuple[bool, str]]:
    """What must hold after a crash: finished work done once, the takeover fenced."""
    count = {}
    for e in events:
        count[e["type"]] = count.get(e["type"], 0) + 1
    requested = [
        call["id"]
        for e in events
        if e["type"] == "llm.completed"
        for call in e["data"]["message"].get("tool_calls") or []
    ]
    completed = [e["data"]["call_id"] for e in events if e["type"] == "tool.completed"]
    epochs = [e["data"]["epoch"] for e in events if e["type"] == "run.started"]
    return [
        (count.get("run.completed") == 1, "the run completed"),
        (
            count.get("llm.completed") == SCRIPTED_STEPS,
            f"{count.get('llm.completed')} model answers journaled for {SCRIPTED_STEPS} scripted "
            f"steps: no finished LLM step was repeated",
        ),
        (
            sorted(completed) == sorted(set(requested)) and len(requested) == len(set(requested)),
            f"{len(completed)} tool calls requested, each completed exactly once: "
            f"no finished tool call was repeated",
        ),
        (
            len(epochs) >= 2 and epochs[-1] > epochs[0],
            f"epochs {' -> '.join(map(str, epochs))}: the new worker took over with a higher epoch",
        ),
        (report.is_file(), f"the report exists: {report}"),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--db",
        type=Path,
        default=ROOT / ".everruns" / "demo.db",
        help="SQLite file to use (deleted first); default .everruns/demo.db",
    )
    args = parser.parse_args()
    db: Path = args.db.resolve()

    # A fresh database every time.
    db.parent.mkdir(parents=True, exist_ok=True)
    for leftover in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        leftover.unlink(missing_ok=True)
    env = dict(os.environ)
    env.pop("EVERRUNS_CRASH_AT", None)
    env["EVERRUNS_DATABASE_URL"] = f"sqlite:///{db}"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(EXAMPLES), env.get("PYTHONPATH")]))
    output_dir = Path(env.get("RESEARCH_OUTPUT_DIR") or EXAMPLES / "output")
    report = output_dir / "durable-execution-in-brief.md"
    report.unlink(missing_ok=True)

    banner("1. queue a run")
    say(f"database: {db}")
    run_id = everruns(
        "start", str(SPEC.relative_to(ROOT)), "--input", "Survey durable execution", env=env
    ).strip()
    say(
        f"$ everruns start examples/agents/researcher.yaml --input 'Survey durable execution'\n{run_id}"
    )

    banner("2. a worker executes it; we follow the journal")
    workers = [start_worker("worker-1", env, db.parent)]
    follower, events = follow(run_id, env)
    killed = False
    tool_results = 0
    status = None
    deadline = time.monotonic() + TIMEOUT
    try:
        while status is None:
            try:
                event = events.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                say(f"timed out after {TIMEOUT:g}s; worker logs are in {db.parent}")
                return 1
            if event is None:
                say("the event follower stopped unexpectedly")
                return 1
            show(event)
            last = event
            if event["type"] == "tool.completed":
                tool_results += 1
            if event["type"] in ("run.completed", "run.failed", "run.cancelled"):
                status = event["type"].split(".")[1]
            elif not killed and tool_results >= KILL_AFTER_TOOL_RESULTS:
                banner("3. CRASH: SIGKILL the worker mid-run")
                workers[0].send_signal(signal.SIGKILL)
                workers[0].wait()
                killed = True
                say(
                    f"[{elapsed()}] killed worker-1 (pid {workers[0].pid}) with SIGKILL: no cleanup, "
                    "and its lease is still held"
                )
                # The follower polls the journal; show what the dead worker wrote just before.
                time.sleep(0.6)
                while not events.empty():
                    late = events.queue[0]
                    if late is None or late["type"] in ("run.completed", "run.failed"):
                        break  # leave endings to the main loop
                    show(events.get())
                    last = late
                say(
                    f"           it died after journaling #{last['seq']} {last['type']}; "
                    "anything it did after that is lost and will be redone"
                )
                banner("4. a new worker takes over once the lease expires (2 s)")
                workers.append(start_worker("worker-2", env, db.parent))
    finally:
        for proc in workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # graceful: releases leases
                proc.wait(20)
        if follower.poll() is None:
            follower.terminate()
        follower.wait(5)

    banner(f"5. the run {status}")
    say(f"$ everruns status {run_id}")
    say(everruns("status", run_id, env=env).rstrip())

    banner("6. verify: no finished step was repeated")
    journal = [
        json.loads(line) for line in everruns("events", run_id, "--json", env=env).splitlines()
    ]
    redone = [e for e in journal if e["type"] == "llm.started" and e["data"]["attempt"] > 1]
    redone += [e for e in journal if e["type"] == "tool.started" and e["data"]["attempt"] > 1]
    checks = verify(journal, report)
    if not killed:
        checks.append((False, "the worker was killed mid-run (the run ended before we could)"))
    for ok, text in checks:
        say(f"  [{'ok' if ok else 'FAILED'}] {text}")
    if redone:
        say("  only the work in flight at the crash was redone:")
        for e in redone:
            say(f"    {e['type']} {describe(e)}")
    else:
        say("  nothing was redone: the worker died between two steps")
    say(f"\nworker logs: {db.parent}/demo-worker-*.log   report: {report}")
    if all(ok for ok, _ in checks):
        say("demo passed: the run survived a SIGKILL without repeating finished work")
        return 0
    say("demo FAILED: see the checks above")
    return 1


if __name__ == "__main__":
    sys.exit(main())
