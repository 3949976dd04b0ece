"""The runs-row projection: the runs-table columns that follow from the journal.

`project(events, now, current)` says how appending `events` changes the run's row:
its status, totals (steps, tokens, cost), wake-up time, result and error, the lease
cleared when the run ends or pauses, and the seq marks the crash-loop guard counts
progress by. `Store.append` applies it in the same UPDATE that fences the append,
and nothing else writes these columns from journal events. (Claim and release are
lease transitions, not events: they set status running / queued / waiting and
`wake_at` when a worker takes or gives up a run.)

Cumulative values are increments (`steps += 1`) and seq marks are offsets from the
row's current `last_seq`, so the store needs no read of the row first. Only a
signal (an event journaled from outside the lease holder) depends on the row as it
is: pass its `RowFacts`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from everruns.core.events import (
    CONTEXT_COMPACTED,
    LIMITS_CHANGED,
    LLM_CHARGED,
    LLM_COMPLETED,
    LLM_FAILED,
    MESSAGE_USER,
    NOT_PROGRESS,
    OUTCOME_GRADED,
    RUN_CANCELLED,
    RUN_COMPLETED,
    RUN_FAILED,
    RUN_FORKED,
    RUN_INTERRUPTED,
    RUN_PAUSED,
    RUN_RESUMED,
    RUN_STARTED,
    SIGNALS,
    TERMINAL_STATUSES,
    TOOL_COMPLETED,
    TOOL_FAILED,
    TOOL_RETRYING,
    RunStatus,
)

TOTALS = (
    "steps",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "unpriced_calls",
    "cached_input_tokens",
)
_UNLEASED = {"wake_at": None, "lease_owner": None, "lease_expires_at": None}


@dataclass(frozen=True)
class RowFacts:
    """What a signal's projection needs to know of the row it lands on."""

    status: str
    leased: bool  # a worker holds the lease (`lease_owner` is set)
    wake_at: float | None


@dataclass
class RowUpdate:
    """Column changes: `set` values, `add` increments, `seq` offsets from `last_seq`."""

    set: dict[str, Any] = field(default_factory=dict)
    add: dict[str, int | float] = field(default_factory=dict)
    seq: dict[str, int] = field(default_factory=dict)

    def apply(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """The row after this update (for tests and for rows built in memory)."""
        out = dict(row)
        base = int(row.get("last_seq") or 0)
        out.update(self.set)
        for column, amount in self.add.items():
            out[column] = (out.get(column) or 0) + amount
        for column, offset in self.seq.items():
            out[column] = base + offset
        return out


def _add(update: RowUpdate, column: str, amount: int | float) -> None:
    if amount:
        update.add[column] = update.add.get(column, 0) + amount


def _usage(update: RowUpdate, usage: Mapping[str, Any] | None) -> None:
    if usage:
        _add(update, "input_tokens", int(usage.get("input_tokens", 0)))
        _add(update, "output_tokens", int(usage.get("output_tokens", 0)))
        _add(update, "cost_usd", float(usage.get("cost_usd", 0.0)))
        if usage.get("cost_known") is False:
            _add(update, "unpriced_calls", 1)
        _add(update, "cached_input_tokens", int(usage.get("cached_input_tokens", 0)))


def _signal(update: RowUpdate, kind: str, now: float, current: RowFacts) -> None:
    """A message to a finished run starts a new turn; any signal wakes a parked run."""
    if kind == MESSAGE_USER and current.status in TERMINAL_STATUSES:
        update.set.update(status=RunStatus.QUEUED, wake_at=now, result=None, error=None)
    elif not current.leased and (current.wake_at is None or current.wake_at > now):
        update.set["wake_at"] = now


def project(
    events: Iterable[tuple[str, Mapping[str, Any]]],
    now: float,
    current: RowFacts | None = None,
) -> RowUpdate:
    """How appending `events` (type, data) at time `now` changes the run's row."""
    update = RowUpdate(set={"updated_at": now})
    count = 0
    for kind, data in events:
        count += 1
        if kind not in NOT_PROGRESS:
            update.seq["progress_seq"] = count  # moved to the last event below
        if kind == RUN_STARTED:  # a new holder's progress is counted from here
            update.seq["claim_seq"] = count
            update.set["status"] = RunStatus.RUNNING
        elif kind == LLM_COMPLETED:
            _add(update, "steps", 1)
            _usage(update, data.get("usage"))
        elif kind in (LLM_FAILED, CONTEXT_COMPACTED, LLM_CHARGED):
            _usage(update, data.get("usage"))
        elif kind == OUTCOME_GRADED:  # the grader's cost is the run's
            _usage(update, data.get("usage"))
            update.set["verdict"] = data.get("verdict")
        elif kind == RUN_INTERRUPTED:  # parked until the next user message
            update.set.update(
                status=RunStatus.WAITING,
                interrupt_requested=False,
                steer_requested=False,
                **_UNLEASED,
            )
        elif kind == RUN_COMPLETED:
            update.set.update(status=RunStatus.COMPLETED, result=data.get("result"), **_UNLEASED)
            update.set.update(interrupt_requested=False, steer_requested=False)
        elif kind == RUN_FAILED:
            error = {"reason": data.get("reason"), "message": data.get("error")}
            update.set.update(status=RunStatus.FAILED, error=error, **_UNLEASED)
        elif kind == RUN_CANCELLED:
            error = {"reason": "cancelled", "message": data.get("reason")}
            update.set.update(
                status=RunStatus.CANCELLED, error=error, cancel_requested=True, **_UNLEASED
            )
        elif kind == RUN_PAUSED:
            update.set.update(status=RunStatus.PAUSED, pause_requested=False, **_UNLEASED)
        elif kind in (RUN_RESUMED, RUN_FORKED):
            update.set.update(status=RunStatus.QUEUED, wake_at=now)
            if kind == RUN_RESUMED:  # a run failed on a raised limit continues too
                update.set.update(pause_requested=False, error=None)
        elif kind == LIMITS_CHANGED:
            update.set["limits"] = dict(data.get("limits") or {})
        elif kind in (TOOL_COMPLETED, TOOL_FAILED, TOOL_RETRYING) and data.get("progress"):
            update.set["progress"] = data["progress"]  # the latest ctx.progress()
        if kind in SIGNALS and current is not None:
            _signal(update, kind, now, current)
    if "progress_seq" in update.seq:
        update.seq["progress_seq"] = count
    update.seq["last_seq"] = count
    return update


def totals(events: Iterable[tuple[str, Mapping[str, Any]]]) -> dict[str, int | float]:
    """The cumulative columns of a journal from its start (a forked run's copied prefix)."""
    added = project(events, 0.0).add
    return {column: added.get(column, 0) for column in TOTALS}
