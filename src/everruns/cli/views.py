"""The CLI's own view of a run, the same whichever back end it came from (each back end
converts its own record into it), and how the commands print it."""

from __future__ import annotations

from typing import Any

from pydantic import Field
from rich import box
from rich.table import Column, Table

from everruns.client import Run
from everruns.client.models import Usage
from everruns.core.events import EventType
from everruns.render import format_cost, format_status_time


class RunView(Run):
    """A run as the CLI shows it: the API's run object (its `--json` shape is
    `to_dict()`), plus what only the database knows."""

    lease_expires_at: float | None = Field(default=None, exclude=True)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()


def event_record(
    run_id: str, seq: int | None, type: str, ts: float | None, data: dict[str, Any]
) -> dict[str, Any]:
    """One journal event as `events` prints it (`--json`: one object a line)."""
    return {"run_id": run_id, "seq": seq, "type": type, "ts": ts, "data": data}


def pending_approvals(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The tool calls of a journal that wait for a human (requested, not yet decided)."""
    pending: dict[str, dict[str, Any]] = {}
    for record in records:
        call_id = record["data"].get("call_id")
        if record["type"] == EventType.APPROVAL_REQUESTED:
            pending[call_id] = record["data"]
        elif record["type"] in (EventType.APPROVAL_GRANTED, EventType.APPROVAL_DENIED):
            pending.pop(call_id, None)
    return list(pending.values())


def approval_hint(run_id: str, call: dict[str, Any]) -> str:
    """What a run waiting for a human waits for, and the commands that decide it."""
    call_id = call["call_id"]
    return (
        f"approval of {call.get('name', 'a tool')} ({call_id}): "
        f"everruns approve {run_id} {call_id}  |  everruns deny {run_id} {call_id} --reason ..."
    )


def _usage(run: Run) -> str:
    return usage_line(run.usage)


def status_table(run: RunView, waits_for: list[dict[str, Any]] | None = None) -> Table:
    table = Table(show_header=False, box=None)
    table.add_row("id", run.id)
    table.add_row("agent", f"{run.agent} v{run.agent_version}")
    table.add_row("status", run.status)
    for call in waits_for or []:
        table.add_row("waits for", approval_hint(run.id, call))
    if run.status == "waiting" and not waits_for:
        table.add_row(
            "wakes",
            format_status_time(run.wake_at)
            if run.wake_at
            else f"on a message: everruns message {run.id} TEXT",
        )
    table.add_row("steps", str(run.steps))
    if run.progress:
        table.add_row("progress", format_progress(run.progress))
    table.add_row("usage", usage_line(run.usage))
    if run.tree_usage != run.usage:
        table.add_row("tree usage", usage_line(run.tree_usage) + " (with its sub-agents)")
    if run.limits:
        table.add_row("limits", ", ".join(f"{k}={v}" for k, v in run.limits.items()))
    if run.usage.cache_hit_ratio is not None:
        table.add_row(  # the label fits the column of "created"
            "cached",
            f"{run.usage.cache_hit_ratio:.0%} of input tokens read from the prompt cache "
            f"({run.usage.cached_input_tokens})",
        )
    table.add_row("created", format_status_time(run.created_at))
    if run.result is not None:
        table.add_row("result", run.result)
    if run.outcome is not None:
        table.add_row("outcome", run.outcome.replace("_", " "))  # the grader's verdict
    if run.error:
        table.add_row("error", f"{run.error.get('reason')}: {run.error.get('message')}")
    return table


def format_progress(progress: dict[str, Any]) -> str:
    """`412 of 10000 (4%) · note` from a ctx.progress() value."""
    done, total = progress.get("done"), progress.get("total")
    text = f"{done:g}" if isinstance(done, int | float) else str(done)
    if isinstance(total, int | float) and total:
        text += f" of {total:g} ({100 * float(done or 0) / total:.0f}%)"
    if progress.get("note"):
        text += f" · {progress['note']}"
    return text


def run_summary(run: Run, wall: float) -> list[str]:
    """`everruns run`'s closing lines: status, steps, tokens, cost, wall time, result."""
    steps = f"{run.steps} step" + ("" if run.steps == 1 else "s")
    lines = [f"run {run.id} {run.status}: {steps}, {_usage(run)}, {wall:.1f}s"]
    if run.result is not None:
        lines.append(f"result: {run.result}")
    if run.error:
        lines.append(f"error: {run.error.get('reason')}: {run.error.get('message')}")
    return lines


#: `ls` columns in display order, and most wanted first (a narrow terminal drops the last).
RUN_COLUMNS = ("id", "agent", "status", "steps", "tokens", "cost", "tree cost", "created")
RUN_PRIORITY = ("id", "status", "agent", "created", "steps", "tokens", "cost", "tree cost")


def _run_cells(r: RunView) -> dict[str, str]:
    return {
        "id": r.id,
        "agent": r.agent,
        "status": r.status,
        "steps": str(r.steps),
        "tokens": str(r.usage.total_tokens),
        "cost": format_cost(r.usage.cost_usd, r.usage.cost_known),
        "tree cost": format_cost(r.tree_usage.cost_usd, r.tree_usage.cost_known),
        "created": format_status_time(r.created_at),
    }


def fitted_table(
    rows: list[dict[str, str]], order: tuple[str, ...], priority: tuple[str, ...], width: int
) -> Table:
    """A table whose cells are never cut (ids are what a user copies): when the terminal
    is too narrow for every column, the least wanted ones (end of `priority`) are left out."""
    shown: dict[str, int] = {}
    used = 0
    for name in priority:
        need = max([len(name), *(len(row[name]) for row in rows)])
        if shown and used + need + 3 > width + 1:  # 3: padding and gap
            break
        shown[name] = need
        used += need + 3
    names = [c for c in order if c in shown]
    columns = [Column(c, no_wrap=True, min_width=shown[c]) for c in names]
    table = Table(*columns, box=box.SIMPLE_HEAD, pad_edge=False)
    for row in rows:
        table.add_row(*(row[c] for c in names))
    return table


def runs_table(runs: list[RunView], width: int = 80) -> Table:
    return fitted_table([_run_cells(r) for r in runs], RUN_COLUMNS, RUN_PRIORITY, width)


def usage_line(usage: Usage) -> str:
    return (
        f"{usage.input_tokens} in + {usage.output_tokens} out tokens, "
        f"{format_cost(usage.cost_usd, usage.cost_known)}"
    )


def totals_line(runs: list[RunView]) -> str:
    """`ls --agent`: what the listed runs' own calls spent together."""
    tokens = sum(r.usage.total_tokens for r in runs)
    unknown = sum(1 for r in runs if not r.usage.cost_known)
    cost = sum(r.usage.cost_usd or 0.0 for r in runs)
    line = f"total: {len(runs)} runs, {tokens} tokens, ${cost:.4f}"
    if unknown:
        line += f" + unknown (cost unknown for {unknown} runs: a model without a price)"
    return line
