"""The run verbs beyond a plain message: steer and interrupt (cancel is in app.py), each
answering with a receipt — the seq of the event it produced.

A verb on a run a live worker holds is carried to that worker (`everruns_control` NOTIFY on
PostgreSQL, the control poll on SQLite, like a cancel); the receipt then waits up to
`RECEIPT_WAIT` seconds for the worker's event and says `requested` with no seq if it has
not come yet.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from everruns.api.deps import StoreDep
from everruns.api.models import MessageCreate, Receipt
from everruns.core.events import RUN_INTERRUPTED, TERMINAL_EVENTS
from everruns.store.waits import wait_for_event


def add_verb_routes(app: FastAPI, auth: list[Any], wake: Callable[[], None]) -> None:
    @app.post("/v1/runs/{run_id}/steer", tags=["runs"], status_code=201, dependencies=auth)
    async def steer_run(run_id: str, body: MessageCreate, store: StoreDep) -> Receipt:
        """Redirect the run within its current turn: the message is journaled at once and
        injected at the next step boundary (after the in-flight LLM call or tool batch);
        tool calls the model planned but has not started are skipped."""
        event = await store.steer(run_id, body.content)
        wake()
        return Receipt(id=run_id, outcome="steered", seq=event.seq)

    @app.post("/v1/runs/{run_id}/interrupt", tags=["runs"], dependencies=auth)
    async def interrupt_run(run_id: str, store: StoreDep) -> Receipt:
        """Stop the in-flight LLM call and tools now (pure/idempotent calls are cancelled,
        at_most_once ones are marked outcome-unknown), journal what was cut
        (`run.interrupted`) and park the run until the next user message."""
        outcome, event, before = await store.interrupt(run_id)
        if event is not None:
            return Receipt(id=run_id, outcome=outcome, seq=event.seq)
        if outcome != "requested":
            return Receipt(id=run_id, outcome=outcome)
        kinds = frozenset({RUN_INTERRUPTED, *TERMINAL_EVENTS})
        seq = await wait_for_event(store, run_id, before, kinds)
        return Receipt(id=run_id, outcome="interrupted" if seq else "requested", seq=seq)
