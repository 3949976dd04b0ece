"""The CLI's own view of a run, the same whichever back end it came from (each back end
converts its own record into it), and how the commands print it. Its `to_dict` is the
`--json` shape, which is the HTTP API's run object."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.table import Table

from everruns.render import format_status_time


@dataclass(frozen=True)
class RunView:
    id: str
    agent: str
    agent_version: int
    parent_id: str | None
    status: str
    steps: int
    input_tokens: int
    output_tokens: int
    cost_usd: float
    input: str | None
    result: str | None
    error: dict[str, Any] | None
    epoch: int
    lease_owner: str | None
    wake_at: float | None
    last_seq: int
    created_at: float
    updated_at: float
    lease_expires_at: float | None = None  # known to the local back end only

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "agent": self.agent,
            "agent_version": self.agent_version,
            "parent_id": self.parent_id,
            "status": self.status,
            "steps": self.steps,
            "usage": {
                "input_tokens": self.input_tokens,
                "output_tokens": self.output_tokens,
                "total_tokens": self.input_tokens + self.output_tokens,
                "cost_usd": round(self.cost_usd, 6),
            },
            "input": self.input,
            "result": self.result,
            "error": self.error,
            "epoch": self.epoch,
            "lease_owner": self.lease_owner,
            "wake_at": self.wake_at,
            "last_seq": self.last_seq,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


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
    table.add_row(
        "usage",
        f"{run.input_tokens} in + {run.output_tokens} out tokens, ${run.cost_usd:.4f}",
    )
    table.add_row("created", format_status_time(run.created_at))
    if run.result is not None:
        table.add_row("result", run.result)
    if run.error:
        table.add_row("error", f"{run.error.get('reason')}: {run.error.get('message')}")
    return table


def runs_table(runs: list[RunView]) -> Table:
    table = Table("id", "agent", "status", "steps", "tokens", "cost", "created")
    for r in runs:
        table.add_row(
            r.id,
            r.agent,
            r.status,
            str(r.steps),
            str(r.input_tokens + r.output_tokens),
            f"${r.cost_usd:.4f}",
            format_status_time(r.created_at),
        )
    return table
