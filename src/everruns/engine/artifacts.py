"""A run's files in and out, written once for the API and the CLI's local back end.

In: input files become blobs and a `{path: sha256}` manifest on `run.created`, so the
workspace holds them before the first step on whichever worker claims the run. Out:
the workspace as the journal tells it (`core/files.py`), with sizes from the blobs.
"""

from __future__ import annotations

from typing import Any

from everruns.core.files import FileChange, file_changes, file_index
from everruns.spec import AgentSpec
from everruns.store import Store
from everruns.tools.workspace import store_inputs


async def start_with_files(
    store: Store,
    spec: AgentSpec,
    input: str | None,
    files: dict[str, bytes] | None = None,
    *,
    origin: str = "local",
) -> str:
    """Queue a run whose workspace starts with `files` (path -> content)."""
    manifest = await store_inputs(store, files) if files else {}
    created = {"files": manifest} if manifest else None
    return await store.create_run(spec, input, origin=origin, created_data=created)


async def run_changes(store: Store, run_id: str) -> list[FileChange]:
    """What each event changed in the run's workspace (RunNotFound for no such run)."""
    await store.get_run(run_id)
    return file_changes(await store.load_events(run_id))


def listing(history: list[FileChange]) -> list[dict[str, Any]]:
    return [
        {"path": e.path, "sha256": e.sha256, "seq": e.seq, "step": e.step, "call_id": e.call_id}
        for e in file_index(history).values()
    ]


async def run_files(store: Store, run_id: str) -> list[dict[str, Any]]:
    """The run's files: path, sha256, size, and the seq/step/call that last changed each
    (seq 1 and step 0: handed in when the run was created)."""
    entries = listing(await run_changes(store, run_id))
    sizes = await store.blob_sizes(sorted({e["sha256"] for e in entries}))
    return [{**e, "size": sizes.get(e["sha256"])} for e in entries]


async def run_file_contents(store: Store, run_id: str) -> dict[str, bytes]:
    """path -> content of every file of the run's workspace, as journaled."""
    entries = listing(await run_changes(store, run_id))
    blobs = await store.get_blobs(sorted({e["sha256"] for e in entries}))
    return {e["path"]: blobs[e["sha256"]] for e in entries}
