"""Run verbs beyond a message: steer (redirect within the current turn) and interrupt
(cut the in-flight atom, wait for a message); webhooks and their deliveries; retention."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from everruns.cli.backend import open_backend
from everruns.cli.common import (
    DbOption,
    JsonOption,
    RunIdArgument,
    ServerOption,
    TokenOption,
    out,
    print_json,
    run_async,
)
from everruns.settings import load_settings
from everruns.store import Store
from everruns.store.retention import cutoff


def steer(
    run_id: RunIdArgument,
    text: Annotated[str, typer.Argument(help="What the agent should do instead.")],
    db: DbOption = None,
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Redirect a running agent now: the message is journaled at once and injected at the
    next step boundary of the current turn (tool calls planned but not started are skipped)."""

    async def go() -> None:
        async with open_backend(db, server, token) as backend:
            seq = await backend.steer(run_id, text)
        out.print(f"steer journaled as seq {seq} of {run_id}")

    run_async(go)


def interrupt(
    run_id: RunIdArgument,
    db: DbOption = None,
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Stop the in-flight LLM call and tools now and park the run until the next message
    (`everruns message RUN TEXT` continues it)."""

    async def go() -> None:
        async with open_backend(db, server, token) as backend:
            outcome, seq = await backend.interrupt(run_id)
        where = f" as seq {seq}" if seq is not None else ""
        out.print(f"{run_id}: {outcome}{where}")

    run_async(go)


def retention(
    db: DbOption = None,
    json_out: JsonOption = False,
) -> None:
    """Apply the `retention:` policy of the settings file: prune the journals of runs that
    finished long enough ago (their runs rows stay as the summary). Without a policy
    nothing is deleted: runs never expire by default. Also drops expired idempotency keys."""

    async def go() -> None:
        policy = load_settings().retention
        store = await Store.open(db)
        try:
            keys = await store.idempotency.purge()
            pruned = None
            if policy is not None:
                before = cutoff(policy.completed_after_days)
                pruned = await store.retention.prune(before, policy.statuses)
        finally:
            await store.close()
        report: dict[str, Any] = {
            "policy": policy.model_dump() if policy else None,
            "pruned": pruned,
            "idempotency_keys_purged": keys,
        }
        if json_out:
            print_json(report)
        elif pruned is None:
            out.print("no retention policy: nothing pruned (runs never expire by default)")
        else:
            out.print(f"pruned the journals of {pruned['runs']} runs ({pruned['events']} events)")

    run_async(go)
