"""A run's journal as a file (JSON lines): what `everruns export RUN` writes.

Line 1 is a header: the run (id, agent, status, input, result), the agent spec
it ran with, and the tool schemas the model was offered (taken when exporting,
from the tools the spec names; so export with the code that recorded the run).
Every further line is one journal event: `{"seq", "type", "ts", "data"}`.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from everruns.core.events import RUN_CREATED, Event
from everruns.core.state import State, fold
from everruns.spec import AgentSpec, parse_spec
from everruns.store import Store, new_id
from everruns.store.schema import events as events_table
from everruns.store.schema import runs as runs_table
from everruns.tools.registry import ToolSpecError, build_tools

FORMAT = "everruns-journal"
VERSION = 1


class JournalFileError(ValueError):
    """The file is not an everruns journal export; the message says why."""


@dataclass
class Recording:
    run: dict[str, Any]
    spec: AgentSpec
    tools: list[dict[str, Any]] | None  # None: the tools could not be loaded when exporting
    events: list[Event]

    @property
    def state(self) -> State:
        return fold(self.events)


def tool_schemas(spec: AgentSpec) -> list[dict[str, Any]] | None:
    try:
        tools = build_tools(spec)
    except (ToolSpecError, ValueError):
        return None
    return [
        {"name": t.name, "description": t.description, "parameters": t.parameters}
        for t in tools.values()
    ]


async def load_run(store: Store, run_id: str) -> Recording:
    row = await store.get_run(run_id)
    spec = await store.get_agent(row.agent_name, row.agent_version)
    events = await store.load_events(run_id)
    run = {
        "id": row.id,
        "agent": row.agent_name,
        "version": row.agent_version,
        "status": row.status,
        "input": row.input,
        "result": row.result,
    }
    return Recording(run, spec, tool_schemas(spec), events)


def dumps(recording: Recording) -> str:
    header = {
        "format": FORMAT,
        "version": VERSION,
        "run": recording.run,
        "spec": recording.spec.to_dict(),
        "tools": recording.tools,
    }
    lines = [json.dumps(header, ensure_ascii=False, default=str)]
    lines += [json.dumps(e.to_dict(), ensure_ascii=False, default=str) for e in recording.events]
    return "\n".join(lines) + "\n"


async def export_run(store: Store, run_id: str, path: str | Path | None = None) -> str:
    """The run's journal file text; also written to `path` when given."""
    text = dumps(await load_run(store, run_id))
    if path is not None:
        await asyncio.to_thread(Path(path).write_text, text, encoding="utf-8")
    return text


def read(path: str | Path) -> Recording:
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise JournalFileError(f"{source}: cannot read: {exc.strerror}") from None
    return parse(text, source)


def parse(text: str, source: str = "<journal>") -> Recording:
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise JournalFileError(f"{source}: empty file (expected `everruns export RUN` output)")
    try:
        header = json.loads(lines[0])
        rows = [json.loads(line) for line in lines[1:]]
    except json.JSONDecodeError as exc:
        raise JournalFileError(f"{source}: line {exc.lineno}: not JSON: {exc.msg}") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise JournalFileError(f"{source}: not an everruns journal export (no header line)")
    if header.get("version") != VERSION:
        raise JournalFileError(f"{source}: unsupported version {header.get('version')!r}")
    events = []
    for number, row in enumerate(rows, start=2):
        try:
            events.append(Event(int(row["seq"]), str(row["type"]), float(row["ts"]), row["data"]))
        except (KeyError, TypeError, ValueError):
            raise JournalFileError(f"{source}: line {number}: not a journal event") from None
    if [e.seq for e in events] != list(range(1, len(events) + 1)):
        raise JournalFileError(f"{source}: the events' seq are not 1, 2, 3, ...")
    spec = parse_spec(header.get("spec"), f"{source}: spec")
    return Recording(header.get("run") or {}, spec, header.get("tools"), events)


async def import_run(store: Store, recording: Recording) -> str:
    """Insert a recorded run (a new run id, its agent version saved) and return its id.

    A finished run keeps its status; an unfinished one is imported paused, so no
    worker continues it until someone resumes it.
    """
    version = await store.save_agent(recording.spec)
    state = recording.state
    status = state.status if state.terminal else "paused"
    run_id = new_id()
    now = time.time()
    events = [
        Event(e.seq, e.type, e.ts, _reversioned(e, recording.spec.name, version))
        for e in recording.events
    ]
    async with store.engine.begin() as conn:
        await conn.execute(
            runs_table.insert().values(
                id=run_id,
                agent_name=recording.spec.name,
                agent_version=version,
                status=status,
                epoch=state.epoch,
                wake_at=None,
                last_seq=len(events),
                input=state.input,
                result=state.result,
                error=json.dumps(_error(state)) if state.error else None,
                steps=state.steps,
                input_tokens=state.input_tokens,
                output_tokens=state.output_tokens,
                cost_usd=state.cost_usd,
                created_at=state.created_ts or now,
                updated_at=now,
            )
        )
        if events:
            await conn.execute(
                sa.insert(events_table),
                [
                    {
                        "run_id": run_id,
                        "seq": e.seq,
                        "type": e.type,
                        "ts": e.ts,
                        "data": json.dumps(e.data, separators=(",", ":"), ensure_ascii=False),
                    }
                    for e in events
                ],
            )
    return run_id


def _error(state: State) -> dict[str, Any]:
    """The runs-table form of a failed or cancelled run's error (as the engine writes it)."""
    data = state.error or {}
    reason = data.get("reason") or ("cancelled" if state.status == "cancelled" else "error")
    return {"reason": reason, "message": data.get("error") or data.get("message")}


def _reversioned(event: Event, name: str, version: int) -> dict[str, Any]:
    if event.type != RUN_CREATED:
        return event.data
    return {**event.data, "agent": {"name": name, "version": version}}
