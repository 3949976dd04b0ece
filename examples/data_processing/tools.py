"""The data-processing agent's tool: enrich a batch of CSV records through the API.

`enrich_batch` reads rows of `records.csv` from the run's workspace, posts them to the
API (`DATAPROC_API`, default http://127.0.0.1:8787) with the call's idempotency key,
and writes the answers into `results/part-<first>.csv`. A 429 or 503 raises
`RetryLater`: the engine journals `tool.retrying`, waits (durably when long) and calls
again with the same key. The tool is idempotent: after a worker dies mid-call the call
runs again with the same key, the API answers from its cache, and the part file is
written again with the same content — every record is processed exactly once.
"""

from __future__ import annotations

import csv
import io
import json
import os
import urllib.error
import urllib.request
from pathlib import Path

from everruns import RetryLater, ToolContext, ToolError, tool

FIELDS = ("id", "name", "city", "score", "region")


def _post(url: str, key: str, records: list[dict[str, str]]) -> dict[str, object]:
    request = urllib.request.Request(
        f"{url}/enrich",
        data=json.dumps({"records": records}).encode(),
        headers={"Content-Type": "application/json", "Idempotency-Key": key},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=20) as reply:
            return dict(json.loads(reply.read()))
    except urllib.error.HTTPError as exc:
        if exc.code in (429, 503):
            after = exc.headers.get("Retry-After")
            reason = f"HTTP {exc.code}"
            raise RetryLater(after=float(after) if after else None, reason=reason) from None
        raise ToolError(f"the API answered {exc.code}: {exc.read()[:200]!r}") from None
    except urllib.error.URLError as exc:
        raise RetryLater(reason=f"the API is unreachable: {exc.reason}") from None


@tool(effect="idempotent", workspace=True)
def enrich_batch(first: int, count: int, ctx: ToolContext) -> str:
    """Enrich records first .. first+count-1 (0-based rows of records.csv) through the API.

    Args:
        first: the first row
        count: how many rows
    """
    assert ctx.workspace is not None
    rows = list(csv.DictReader((ctx.workspace / "records.csv").open(encoding="utf-8")))
    batch = rows[first : first + count]
    if not batch:
        raise ToolError(f"records.csv has {len(rows)} rows; nothing at {first}")
    url = os.environ.get("DATAPROC_API", "http://127.0.0.1:8787")
    answer = _post(url, ctx.idempotency_key, batch)
    by_id = {str(r["id"]): r for r in answer["results"]}  # type: ignore[union-attr]
    out = io.StringIO()
    writer = csv.DictWriter(out, FIELDS)
    for row in batch:
        writer.writerow({**row, **by_id[str(row["id"])]})
    part = Path(ctx.workspace, "results", f"part-{first:05d}.csv")
    part.parent.mkdir(exist_ok=True)
    part.write_text(out.getvalue(), encoding="utf-8")
    done = sum(1 for p in part.parent.glob("part-*.csv") for _ in p.open())
    ctx.progress(done, len(rows), f"{done} of {len(rows)} records enriched")
    return f"enriched rows {first}..{first + len(batch) - 1}"


@tool(effect="idempotent", workspace=True)
def merge_results(ctx: ToolContext) -> str:
    """Merge results/part-*.csv into results.csv (with a header) and count the rows."""
    assert ctx.workspace is not None
    parts = sorted((ctx.workspace / "results").glob("part-*.csv"))
    lines = [line for p in parts for line in p.read_text(encoding="utf-8").splitlines()]
    header = ",".join(FIELDS)
    (ctx.workspace / "results.csv").write_text("\n".join([header, *lines]) + "\n")
    return f"results.csv has {len(lines)} records from {len(parts)} batches"
