"""The run object of the HTTP API, to and from a store `RunRow`.

The API serves it (`RunOut`), the client receives it, and the CLI prints it as
`--json` and reads it back in `--server` mode; the store knows nothing of it.
This module imports no web framework, so the CLI can use it without loading one.
"""

from __future__ import annotations

from typing import Any

from everruns.core.budget import usage_ledger
from everruns.store import RunRow

# A list response carries at most this many characters of each run's input and result
# (a 10 MB input would otherwise be in every page of the list, refreshed every 2 s).
BRIEF_CHARS = 200


def run_to_api(row: RunRow, *, brief: bool = False) -> dict[str, Any]:
    """A run as the API returns it; `brief` (lists): input and result cut to
    BRIEF_CHARS, with `truncated: true` when either was cut."""
    out = _run_dict(row)
    if brief:
        for key in ("input", "result"):
            value = out[key]
            if value is not None and len(value) > BRIEF_CHARS:
                out[key] = value[:BRIEF_CHARS]
                out["truncated"] = True
    return out


def _run_dict(row: RunRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "agent": row.agent_name,
        "agent_version": row.agent_version,
        "parent_id": row.parent_id,
        "status": str(row.status),
        "steps": row.steps,
        "usage": row.usage,  # the run's own calls
        "tree_usage": row.tree_usage,  # the run and all its descendants (sub-agents)
        "limits": row.limits,  # what `everruns budget` set over the spec's limits
        "input": row.input,
        "result": row.result,
        "error": row.error,
        "epoch": row.epoch,
        "lease_owner": row.lease_owner,
        "wake_at": row.wake_at,
        "last_seq": row.last_seq,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "outcome": row.verdict,
        "progress": row.progress,
        "truncated": False,
    }


def run_from_api(run: dict[str, Any]) -> RunRow:
    """A RunRow from the API's run object (for the CLI's --server mode)."""
    usage = usage_ledger(run.get("usage"))
    tree = run.get("tree_usage")
    return RunRow(
        id=run["id"],
        agent_name=run["agent"],
        agent_version=run["agent_version"],
        parent_id=run.get("parent_id"),
        status=run["status"],
        epoch=run.get("epoch", 0),
        lease_owner=run.get("lease_owner"),
        lease_expires_at=None,
        wake_at=run.get("wake_at"),
        last_seq=run.get("last_seq", 0),
        crashes=0,
        cancel_requested=False,
        steps=run.get("steps", 0),
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cost_usd=usage.cost_usd,
        cached_input_tokens=usage.cached_input_tokens,
        input=run.get("input"),
        result=run.get("result"),
        error=run.get("error"),
        created_at=run.get("created_at", 0.0),
        updated_at=run.get("updated_at", 0.0),
        verdict=run.get("outcome"),
        progress=run.get("progress"),
        unpriced_calls=usage.unpriced_calls,
        limits=run.get("limits"),
        tree=usage_ledger(tree) if tree else None,
    )
