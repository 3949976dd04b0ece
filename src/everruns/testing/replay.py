"""Replay a recorded run against an agent version (a changed prompt, model or tool).

The agent runs for real (a worker in this process, on SQLite by default), but its
model is served from the recording: for each LLM step the request it would send
(system prompt, messages, tools, model parameters, normalised) is compared with
the request the recorded run sent at that step. Equal: the recorded answer is
returned. Different: the divergence is reported, and the call goes to `live`
(the spec's own model, or another model spec: python, scripted, ...) or, without
`live`, the run fails there. Tools are replayed from the recording (the recorded
result of the same call) or executed, per tool (`tools={"search": "execute"}`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from everruns.core.context import model_view
from everruns.core.events import LLM_COMPLETED, LLM_STARTED, TOOL_COMPLETED, TOOL_FAILED, Event
from everruns.core.state import State, apply, fold, transcript
from everruns.engine import runner
from everruns.providers.base import ProviderError
from everruns.providers.python import ModelRequest, ModelResponse, ToolCall
from everruns.spec import AgentSpec, ModelSpec
from everruns.store import Store
from everruns.testing import journalfile
from everruns.testing._procs import SpecLike, as_spec, sync_form, workdir
from everruns.testing.ask import ask_model
from everruns.testing.diff import diff_runs
from everruns.testing.runs import run_to_end
from everruns.tools.base import Tool, ToolContext, ToolError

SERVE = "everruns.testing.replay:serve"


@dataclass(frozen=True)
class RecordedCall:
    step: int
    request: dict[str, Any]  # normalised
    response: dict[str, Any]  # the llm.completed data


@dataclass
class Divergence:
    step: int
    detail: str

    def __str__(self) -> str:
        return f"step {self.step}: {self.detail}"


@dataclass
class ReplayReport:
    run_id: str
    status: str
    replayed_calls: int
    live_calls: int
    divergence: Divergence | None
    tools_replayed: int
    tools_executed: int
    same: bool
    diff: str
    events: list[Event] = field(repr=False, default_factory=list)

    @property
    def transcript(self) -> list[dict[str, Any]]:
        return transcript(fold(self.events))

    def format(self) -> str:
        first = f"first divergence at {self.divergence}" if self.divergence else "no divergence"
        head = (
            f"replay: {self.status}; {self.replayed_calls} LLM calls served from the recording, "
            f"{self.live_calls} live; tools: {self.tools_replayed} replayed, "
            f"{self.tools_executed} executed; {first}"
        )
        return f"{head}\n{self.diff}"

    def __str__(self) -> str:
        return self.format()


# ------------------------------------------------------------------ requests


def normalise(
    system: str,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    params: dict[str, Any],
) -> dict[str, Any]:
    """The parts of a request that decide the model's answer, in a comparable form."""

    def message(m: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in m.items() if (v is not None and k != "is_error") or m.get(k)}
        return json.loads(json.dumps(out, sort_keys=True, default=str))

    return {
        "system": system.strip(),
        "messages": [message(m) for m in messages],
        "tools": None
        if tools is None
        else sorted(
            (json.loads(json.dumps(t, sort_keys=True)) for t in tools), key=lambda t: t["name"]
        ),
        "parameters": json.loads(json.dumps(params, sort_keys=True, default=str)),
    }


def recorded_calls(recording: journalfile.Recording) -> dict[int, RecordedCall]:
    """The request and answer of each completed LLM step of the recording."""
    out: dict[int, RecordedCall] = {}
    state = State()
    pending: tuple[int, dict[str, Any]] | None = None
    for event in recording.events:
        if event.type == LLM_STARTED:
            request = normalise(
                recording.spec.system_prompt,
                model_view(state),
                recording.tools,
                recording.spec.model.parameters,
            )
            pending = (int(event.data["step"]), request)
        elif event.type == LLM_COMPLETED and pending is not None:
            out.setdefault(pending[0], RecordedCall(pending[0], pending[1], event.data))
            pending = None
        apply(state, event)
    return out


def explain(want: dict[str, Any], got: dict[str, Any]) -> str:
    """What differs between a recorded and a new request, in a line."""
    if want["system"] != got["system"]:
        return f"the system prompt differs: {want['system']!r} -> {got['system']!r}"
    if want["parameters"] != got["parameters"]:
        return f"the model parameters differ: {want['parameters']} -> {got['parameters']}"
    if want["tools"] is not None and want["tools"] != got["tools"]:
        old = {t["name"]: t for t in want["tools"]}
        new = {t["name"]: t for t in got["tools"]}
        if set(old) != set(new):
            return f"the tools differ: {sorted(old)} -> {sorted(new)}"
        for name in old:
            for key in ("description", "parameters"):
                if old[name][key] != new[name][key]:
                    return (
                        f"tool {name!r}: the {key} differs: "
                        f"{old[name][key]!r} -> {new[name][key]!r}"
                    )
    a, b = want["messages"], got["messages"]
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return f"message {i + 1} differs: {x} -> {y}"
    return f"the conversation has {len(b)} messages, the recording {len(a)}"


# ------------------------------------------------------------------ session


class _Session:
    def __init__(
        self,
        recording: journalfile.Recording,
        spec: AgentSpec,
        live: ModelSpec | None,
        tools: dict[str, str],
    ):
        self.calls = recorded_calls(recording)
        self.spec = spec
        self.live = live
        self.tool_modes = tools
        self.replayed = 0
        self.live_calls = 0
        self.divergence: Divergence | None = None
        self.tools_replayed = 0
        self.tools_executed = 0
        self.results = _recorded_results(recording.events)
        self.check_tools = recording.tools is not None

    async def answer(self, request: ModelRequest) -> ModelResponse | str | list[ToolCall]:
        if request.purpose != "reason":
            return await self._live(request, "compaction")
        got = normalise(
            request.system,
            request.messages,
            request.tools if self.check_tools else None,
            request.parameters,
        )
        recorded = self.calls.get(request.step)
        if recorded is not None and recorded.request == got:
            self.replayed += 1
            return _response(recorded.response)
        detail = (
            explain(recorded.request, got)
            if recorded is not None
            else f"the recording has no LLM step {request.step}"
        )
        if self.divergence is None:
            self.divergence = Divergence(request.step, detail)
        return await self._live(request, detail)

    async def _live(self, request: ModelRequest, detail: str) -> ModelResponse:
        if self.live is None:
            raise ProviderError(
                f"replay diverged at step {request.step}: {detail} (no live model configured)",
                error_class="replay_diverged",
                retryable=False,
            )
        self.live_calls += 1
        return await ask_model(self.live, request)

    def tool(self, tool: Tool) -> Tool:
        mode = self.tool_modes.get(tool.name, self.tool_modes.get("*", "replay"))
        if mode == "execute":
            original = tool.invoke

            async def execute(arguments: dict[str, Any], ctx: ToolContext) -> Any:
                self.tools_executed += 1
                return await original(arguments, ctx)

            return dataclasses.replace(tool, invoke=execute)

        async def replay(arguments: dict[str, Any], ctx: ToolContext) -> Any:
            recorded = self.results.get((ctx.tool_call_id, tool.name, _key(arguments)))
            if recorded is None:
                raise ToolError(
                    f"replay: no recorded result for {tool.name}({json.dumps(arguments)}) "
                    f"as call {ctx.tool_call_id}; let it run with tools={{{tool.name!r}: 'execute'}}"
                )
            self.tools_replayed += 1
            kind, output = recorded
            if kind == TOOL_FAILED:
                raise ToolError(output)
            return output

        return dataclasses.replace(tool, invoke=replay)


def _key(arguments: dict[str, Any]) -> str:
    return json.dumps(arguments, sort_keys=True, default=str)


def _recorded_results(events: list[Event]) -> dict[tuple[str, str, str], tuple[str, str]]:
    arguments: dict[str, dict[str, Any]] = {}
    out: dict[tuple[str, str, str], tuple[str, str]] = {}
    for e in events:
        if e.type == LLM_COMPLETED:
            for call in e.data["message"].get("tool_calls") or []:
                arguments[call["id"]] = call.get("arguments") or {}
        elif e.type in (TOOL_COMPLETED, TOOL_FAILED) and not e.data.get("interrupted"):
            call_id = e.data["call_id"]
            value = e.data.get("output", "") if e.type == TOOL_COMPLETED else e.data.get("error")
            key = (call_id, e.data.get("name"), _key(arguments.get(call_id, {})))
            out[key] = (e.type, str(value))  # type: ignore[index]
    return out


def _response(data: dict[str, Any]) -> ModelResponse:
    message = data["message"]
    usage = data.get("usage") or {}
    return ModelResponse(
        text=message.get("content"),
        tool_calls=[
            ToolCall(c["name"], c.get("arguments") or {}, c["id"])
            for c in message.get("tool_calls") or []
        ],
        input_tokens=usage.get("input_tokens"),
        output_tokens=usage.get("output_tokens"),
    )


_session: _Session | None = None
_lock = threading.Lock()


async def serve(request: ModelRequest) -> ModelResponse | str | list[ToolCall]:
    """The model of a replay run (provider python): answers from the active session."""
    if _session is None:
        raise ProviderError(
            "no replay is active in this process", error_class="replay_diverged", retryable=False
        )
    return await _session.answer(request)


@contextlib.contextmanager
def _active(session: _Session) -> Iterator[None]:
    global _session
    if not _lock.acquire(blocking=False):
        raise RuntimeError("another replay is running in this process")
    build_tools = runner.build_tools

    def replay_tools(spec: AgentSpec, **kwargs: Any) -> dict[str, Tool]:
        return {name: session.tool(t) for name, t in build_tools(spec, **kwargs).items()}

    runner.build_tools = replay_tools
    _session = session
    try:
        yield
    finally:
        _session = None
        runner.build_tools = build_tools
        _lock.release()


# ------------------------------------------------------------------ running


async def areplay(
    recording: str | Path | journalfile.Recording,
    spec: SpecLike | None = None,
    *,
    live: bool | ModelSpec | dict[str, Any] = False,
    tools: dict[str, str] | None = None,
    db: str | None = None,
    tmp: str | Path | None = None,
) -> ReplayReport:
    """The async form of `replay`."""
    rec = recording if isinstance(recording, journalfile.Recording) else journalfile.read(recording)
    agent = as_spec(spec) if spec is not None else rec.spec
    for name, mode in (tools or {}).items():
        if mode not in ("replay", "execute"):
            raise ValueError(f"tools[{name!r}]: mode must be 'replay' or 'execute', not {mode!r}")
    live_model: ModelSpec | None = None
    if live is True:
        live_model = agent.model
    elif isinstance(live, ModelSpec):
        live_model = live
    elif isinstance(live, dict):
        live_model = ModelSpec.model_validate(live)
    model = ModelSpec(
        provider="python",
        function=SERVE,
        name=agent.model.label,
        parameters=agent.model.parameters,
        pricing=agent.model.pricing,
    )
    replaying = agent.model_copy(update={"model": model})
    url = db or f"sqlite:///{workdir(tmp, 'everruns-replay-') / 'replay.db'}"
    session = _Session(rec, agent, live_model, dict(tools or {}))
    store = await Store.open(url)
    try:
        with _active(session):
            run_id = await store.create_run(replaying, rec.state.input)
            await run_to_end(store, run_id)
        events = await store.load_events(run_id)
        row = await store.get_run(run_id)
    finally:
        await store.close()
    same, text = diff_runs(rec.events, events, label_a="recorded", label_b="replayed")
    return ReplayReport(
        run_id=run_id,
        status=row.status,
        replayed_calls=session.replayed,
        live_calls=session.live_calls,
        divergence=session.divergence,
        tools_replayed=session.tools_replayed,
        tools_executed=session.tools_executed,
        same=same,
        diff=text,
        events=events,
    )


replay = sync_form(
    areplay,
    "replay",
    """Replay a recorded run (an `everruns export` file) against `spec` (default: the
recorded spec). `live`: where divergent LLM calls go (True: the spec's model; a model
spec; False: the run fails at the first divergence). `tools`: per tool name (or "*"),
"replay" (default: the recorded result) or "execute" (run the tool).""",
)


async def arecord(
    spec: SpecLike,
    input: str | None,
    path: str | Path,
    *,
    db: str | None = None,
    tmp: str | Path | None = None,
) -> Path:
    """The async form of `record`."""
    agent = as_spec(spec)
    url = db or f"sqlite:///{workdir(tmp, 'everruns-record-') / 'record.db'}"
    store = await Store.open(url)
    try:
        run_id = await store.create_run(agent, input)
        await run_to_end(store, run_id)
        await journalfile.export_run(store, run_id, path)
    finally:
        await store.close()
    return Path(path)


record = sync_form(
    arecord,
    "record",
    """Run the agent once (in this process) and export its journal to `path`.""",
)
