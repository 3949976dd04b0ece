"""What the user's tools did, as the crash matrix sees it: the execution ledger.

A worker started by the plugin (everruns.testing.worker) wraps every tool of the
agent; each execution appends one `exec` line to the file named by
EVERRUNS_TESTING_LEDGER (fsync'ed, so a SIGKILL right after loses nothing).
A test double of the outside world (a fake payment API, say) calls
`record_effect` when it really acts, which appends an `effect` line tied to the
tool call being executed. Outside such a worker both are no-ops.
"""

from __future__ import annotations

import contextvars
import json
import os
import signal
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LEDGER_ENV = "EVERRUNS_TESTING_LEDGER"
CRASH_ENV = "EVERRUNS_CRASH_AT"
MID_TOOL = "mid:tool"
MID_LLM = "mid:llm"


@dataclass(frozen=True)
class CurrentCall:
    tool: str
    call_id: str
    attempt: int
    idempotency_key: str
    effect: str


current_call: contextvars.ContextVar[CurrentCall | None] = contextvars.ContextVar(
    "everruns_testing_call", default=None
)


def append(entry: dict[str, Any]) -> None:
    """Append one ledger line durably (no-op when no ledger is configured)."""
    path = os.environ.get(LEDGER_ENV)
    if not path:
        return
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({**entry, "pid": os.getpid()}) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def record_effect(effect: str, *, key: str | None = None) -> None:
    """Declare that a side effect really happened (call it from your test double).

    `effect` describes it ("charge 10 EUR to card-1"); `key` is the idempotency
    key the effect was made with, if any. The crash matrix reports an effect that
    happened twice for one tool call, and a call whose effects used different keys
    (a tool that ignores `ctx.idempotency_key`). The worker may be killed right
    after this returns (the `mid:tool` boundaries).
    """
    call = current_call.get()
    entry: dict[str, Any] = {"kind": "effect", "effect": effect, "key": key}
    if call is not None:
        entry.update(
            tool=call.tool,
            call_id=call.call_id,
            attempt=call.attempt,
            idempotency_key=call.idempotency_key,
            declared=call.effect,
        )
    append(entry)
    if call is not None:
        kill_point(MID_TOOL)


_counts: Counter[str] = Counter()


def _targets() -> dict[str, int]:
    targets: dict[str, int] = {}
    for item in filter(None, (p.strip() for p in os.environ.get(CRASH_ENV, "").split(","))):
        name, _, nth = item.partition("#")
        if name.startswith("mid:"):
            targets[name] = int(nth or 1)
    return targets


def kill_point(point: str) -> None:
    """SIGKILL this process at the n-th hit of a `mid:` point named in EVERRUNS_CRASH_AT.

    (The `before:`/`after:` journal boundaries are the engine's own.)"""
    targets = _targets()
    if point not in targets:
        return
    _counts[point] += 1
    if _counts[point] == targets[point]:
        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)
