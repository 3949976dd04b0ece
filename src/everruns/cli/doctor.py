"""`everruns doctor`: check a deployment from its database and say what needs attention.

Reads only (it never migrates). Exit code 0: all is well; 1: something needs
attention (listed); 2: the database cannot be reached.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.markup import escape

from everruns.cli.common import DbOption, JsonOption, err, out, print_json, run_async
from everruns.store import Store
from everruns.store.health import Thresholds


def doctor(
    db: DbOption = None,
    stuck_after: Annotated[
        float, typer.Option(help="A due run unclaimed this many seconds is stuck.", min=0)
    ] = 60.0,
    approval_after: Annotated[
        float, typer.Option(help="An approval pending this many seconds needs attention.", min=0)
    ] = 3600.0,
    dead_after: Annotated[
        float, typer.Option(help="A worker silent this many seconds is dead.", min=1)
    ] = 60.0,
    max_skew: Annotated[
        float, typer.Option(help="Largest tolerated clock offset from the database, s.", min=0)
    ] = 2.0,
    json_out: JsonOption = False,
) -> None:
    """Check the database, migrations, workers, clocks, breakers, stuck runs and approvals."""
    limits = Thresholds(
        dead_after=dead_after,
        stuck_after=stuck_after,
        approval_after=approval_after,
        max_skew=max_skew,
    )
    code = run_async(lambda: _doctor(db, limits, json_out))
    raise typer.Exit(code)


async def _doctor(db: str | None, limits: Thresholds, json_out: bool) -> int:
    store = await Store.open(db, migrate=False)
    try:
        try:
            await store.ping()
        except Exception as exc:
            if json_out:
                print_json({"database": "unreachable", "error": str(exc), "attention": []})
            else:
                err.print(f"[red]error:[/] the database cannot be reached: {escape(str(exc))}")
            return 2
        report = await _report(store, limits)
    finally:
        await store.close()
    if json_out:
        print_json(report)
    else:
        _print(report)
    return 1 if report["attention"] else 0


async def _report(store: Store, limits: Thresholds) -> dict[str, Any]:
    health = store.health
    current, revision, head = await health.migrations_current()
    now = time.time()
    workers = [
        {**w, "alive": now - float(w["heartbeat_at"]) <= limits.dead_after}
        for w in await health.workers()
    ]
    return {
        "database": "reachable",
        "schema": {"revision": revision, "head": head, "current": current},
        "clock_skew": await health.clock_skew(),
        "workers": [w for w in workers if w["alive"]],
        "attention": await health.attention(limits),
    }


def _print(report: dict[str, Any]) -> None:
    schema = report["schema"]
    out.print(f"database     reachable (this host's clock {report['clock_skew']:+.2f}s off)")
    out.print(
        f"migrations   {schema['revision'] or 'none'}"
        + ("" if schema["current"] else f" (this version needs {schema['head']})")
    )
    workers = report["workers"]
    out.print(f"workers      {len(workers)} alive")
    for w in workers:
        skew = w.get("clock_skew")
        clock = f", clock {skew:+.2f}s" if skew is not None else ""
        out.print(f"  {w['id']}  version {w.get('version') or 'unknown'}{clock}")
    attention = report["attention"]
    if not attention:
        out.print("all is well: nothing needs attention")
        return
    out.print(f"\nneeds attention ({len(attention)}):")
    for item in attention:
        out.print(f"  [{item['check']}] {item['message']}")
