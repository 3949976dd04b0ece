"""Deterministic crash injection for the crash matrix.

`EVERRUNS_CRASH_AT="before:tool.completed"` makes the process SIGKILL itself the
first time the engine reaches that point; `"after:llm.started#2"` the second time.
Points: `before:<event type>`, `after:<event type>`, `llm.mid`, `tool.mid`.
Unset (the normal case), `hit` is a dictionary lookup and nothing else.
"""

from __future__ import annotations

import os
import signal
import sys
from collections import Counter

_counts: Counter[str] = Counter()


def _targets() -> dict[str, int]:
    raw = os.environ.get("EVERRUNS_CRASH_AT", "")
    targets: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        name, _, nth = item.partition("#")
        targets[name] = int(nth or 1)
    return targets


_TARGETS = _targets()


def reload() -> None:
    """Re-read the environment (for tests that set it after import)."""
    global _TARGETS
    _TARGETS = _targets()
    _counts.clear()


def hit(point: str) -> None:
    if not _TARGETS or point not in _TARGETS:
        return
    _counts[point] += 1
    if _counts[point] == _TARGETS[point]:
        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)
