"""Budget commands: `budget` raises (or lowers) a run's limits, `resume` continues a run
that failed on a limit once it was raised (or a paused run)."""

from __future__ import annotations

from typing import Annotated

import typer

from everruns.cli.backend import open_backend
from everruns.cli.common import (
    DbOption,
    RunIdArgument,
    ServerOption,
    TokenOption,
    out,
    run_async,
    usage_error,
)
from everruns.core.budget import check_change


def budget(
    run_id: RunIdArgument,
    max_cost_usd: Annotated[
        float | None,
        typer.Option("--max-cost-usd", help="Dollars, for the run and its sub-agents."),
    ] = None,
    max_tokens: Annotated[
        int | None, typer.Option("--max-tokens", help="Tokens, for the run and its sub-agents.")
    ] = None,
    max_steps: Annotated[int | None, typer.Option("--max-steps", help="LLM answers.")] = None,
    max_llm_calls: Annotated[
        int | None, typer.Option("--max-llm-calls", help="LLM attempts.")
    ] = None,
    deadline: Annotated[
        str | None, typer.Option("--deadline", help="From now: 30m, 2h, 1d or seconds.")
    ] = None,
    db: DbOption = None,
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Raise (or lower) a run's limits; journaled as `limits.changed`. A run that failed on
    a limit then continues with `everruns resume RUN_ID`."""
    given = {
        "max_cost_usd": max_cost_usd,
        "max_tokens": max_tokens,
        "max_steps": max_steps,
        "max_llm_calls": max_llm_calls,
        "deadline": deadline,
    }
    try:
        limits = check_change({k: v for k, v in given.items() if v is not None})
    except ValueError as exc:
        raise usage_error(str(exc).replace("\n", " ")) from None

    async def go() -> None:
        async with open_backend(db, server, token) as backend:
            data = await backend.set_limits(run_id, limits)
            found = await backend.get_run(run_id)
        changes = ", ".join(f"{k} {data['old'].get(k)} → {v}" for k, v in data["new"].items())
        out.print(f"limits of {run_id}: {changes}", highlight=False)
        if found.status == "failed" and (found.error or {}).get("reason") in (
            "budget_exceeded",
            "max_steps_exceeded",
            "deadline_exceeded",
        ):
            out.print(f"it failed on a limit; continue it with: everruns resume {run_id}")

    run_async(go)


def resume(
    run_id: RunIdArgument,
    db: DbOption = None,
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Continue a run that failed on budget_exceeded, max_steps_exceeded or
    deadline_exceeded after its limit was raised (`everruns budget`), or a paused run;
    from its journal, repeating nothing it completed."""

    async def go() -> None:
        async with open_backend(db, server, token) as backend:
            status = await backend.resume(run_id)
        out.print(f"run {run_id} {status}; any worker continues it", highlight=False)

    run_async(go)
