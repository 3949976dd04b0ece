"""The CLI's own view of a run, the same whichever back end it came from (each back end
converts its own record into it), and how the commands print it."""

from __future__ import annotations

from typing import Any

from pydantic import Field
from rich.table import Table

from everruns.client import Run
from everruns.client.models import Usage
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


def status_table(run: RunView) -> Table:
    table = Table(show_header=False, box=None)
    table.add_row("id", run.id)
    table.add_row("agent", f"{run.agent} v{run.agent_version}")
    table.add_row("status", run.status)
    if run.status == "waiting":
        table.add_row("wakes", format_status_time(run.wake_at) if run.wake_at else "on a signal")
    table.add_row("steps", str(run.steps))
    if run.progress:
        table.add_row("progress", format_progress(run.progress))
    table.add_row("usage", usage_line(run.usage))
    if run.tree_usage != run.usage:
        table.add_row("tree usage", usage_line(run.tree_usage) + " (with its sub-agents)")
    if run.limits:
        table.add_row("limits", ", ".join(f"{k}={v}" for k, v in run.limits.items()))
    table.add_row("created", format_status_time(run.created_at))
    if run.result is not None:
        table.add_row("result", run.result)
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


def runs_table(runs: list[RunView]) -> Table:
    table = Table("id", "agent", "status", "steps", "tokens", "cost", "tree cost", "created")
    for r in runs:
        table.add_row(
            r.id,
            r.agent,
            r.status,
            str(r.steps),
            str(r.usage.total_tokens),
            format_cost(r.usage.cost_usd, r.usage.cost_known),
            format_cost(r.tree_usage.cost_usd, r.tree_usage.cost_known),
            format_status_time(r.created_at),
        )
    return table


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
