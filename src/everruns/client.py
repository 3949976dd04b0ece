"""Python SDK for the everruns HTTP API: sync `Client` and async `AsyncClient`.

```python
from everruns import Client
client = Client("http://127.0.0.1:8000", token=...)
agent = client.agents.create_from_file("researcher.yaml")
run = client.runs.start(agent.name, input="Survey durable execution")
for event in client.runs.stream(run.id):      # reconnects by itself with Last-Event-ID
    print(event.type, event.data)
print(client.runs.wait(run.id).result)
```
"""

from __future__ import annotations

import asyncio
import builtins
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel

from everruns.errors import EverrunsError

TERMINAL_EVENTS = {"run.completed", "run.failed", "run.cancelled"}
TERMINAL_STATUSES = {"completed", "failed", "cancelled"}


class ApiError(EverrunsError):
    """An RFC 9457 problem returned by the server."""

    def __init__(self, status: int, problem: dict[str, Any]):
        self.status = status
        self.problem = problem
        self.type = str(problem.get("type", ""))
        self.detail = str(problem.get("detail", ""))
        super().__init__(f"{status} {problem.get('title', '')}: {self.detail}")


class Usage(BaseModel):
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    cost_usd: float = 0.0


class Run(BaseModel):
    id: str
    agent: str
    agent_version: int
    parent_id: str | None = None
    status: str
    steps: int = 0
    usage: Usage = Usage()
    input: str | None = None
    result: str | None = None
    error: dict[str, Any] | None = None
    epoch: int = 0
    lease_owner: str | None = None
    wake_at: float | None = None
    last_seq: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0

    @property
    def done(self) -> bool:
        return self.status in TERMINAL_STATUSES


class Agent(BaseModel):
    name: str
    version: int
    spec: dict[str, Any] | None = None
    archived: bool = False


class Event(BaseModel):
    run_id: str
    type: str
    data: dict[str, Any] = {}
    seq: int | None = None  # None for ephemeral events (token deltas)
    ts: float | None = None
    ephemeral: bool = False


def _raise_for(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        problem = response.json()
    except ValueError:
        problem = {"title": response.reason_phrase, "detail": response.text[:500]}
    raise ApiError(response.status_code, problem)


def _headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _agent_body(path: str | Path) -> dict[str, Any]:
    return {"yaml": Path(path).read_text(encoding="utf-8")}


def _parse_sse(lines: Iterator[str]) -> Iterator[tuple[str | None, str | None, str]]:
    """(id, event, data) for each SSE message; comments are skipped."""
    event_id = event_type = None
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                yield event_id, event_type, "\n".join(data)
            event_id = event_type = None
            data = []
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "id":
                event_id = value
            elif field == "event":
                event_type = value
            elif field == "data":
                data.append(value)


# ------------------------------------------------------------------ sync


class _Agents:
    def __init__(self, http: httpx.Client):
        self._http = http

    def create(self, spec: dict[str, Any]) -> Agent:
        return self._post({"spec": spec})

    def create_from_file(self, path: str | Path) -> Agent:
        return self._post(_agent_body(path))

    def _post(self, body: dict[str, Any]) -> Agent:
        r = self._http.post("/v1/agents", json=body)
        _raise_for(r)
        return Agent.model_validate(r.json())

    def list(self) -> builtins.list[Agent]:
        r = self._http.get("/v1/agents")
        _raise_for(r)
        return [Agent.model_validate(a) for a in r.json()]

    def get(self, name: str, version: int | None = None) -> Agent:
        path = f"/v1/agents/{name}" + (f"/versions/{version}" if version else "")
        r = self._http.get(path)
        _raise_for(r)
        return Agent.model_validate(r.json())


class _Runs:
    def __init__(self, http: httpx.Client, reconnect_delay: float):
        self._http = http
        self._reconnect_delay = reconnect_delay

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        r = self._http.request(method, path, **kw)
        _raise_for(r)
        return r.json()

    def start(
        self,
        agent: str | None = None,
        *,
        input: str | None = None,
        spec: dict[str, Any] | None = None,
        version: int | None = None,
    ) -> Run:
        body = {"agent": agent, "spec": spec, "input": input, "version": version}
        return Run.model_validate(
            self._call("POST", "/v1/runs", json={k: v for k, v in body.items() if v is not None})
        )

    def get(self, run_id: str) -> Run:
        return Run.model_validate(self._call("GET", f"/v1/runs/{run_id}"))

    def list(
        self,
        *,
        status: str | None = None,
        agent: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[builtins.list[Run], str | None]:
        params = {
            k: v
            for k, v in {"status": status, "agent": agent, "limit": limit, "cursor": cursor}.items()
            if v is not None
        }
        page = self._call("GET", "/v1/runs", params=params)
        return [Run.model_validate(r) for r in page["items"]], page["next_cursor"]

    def cancel(self, run_id: str) -> str:
        return str(self._call("POST", f"/v1/runs/{run_id}/cancel")["outcome"])

    def pause(self, run_id: str) -> str:
        return str(self._call("POST", f"/v1/runs/{run_id}/pause")["outcome"])

    def resume(self, run_id: str) -> str:
        return str(self._call("POST", f"/v1/runs/{run_id}/resume")["outcome"])

    def message(self, run_id: str, content: str) -> Event:
        return Event.model_validate(
            self._call("POST", f"/v1/runs/{run_id}/messages", json={"content": content})
        )

    def approve(self, run_id: str, call_id: str) -> Event:
        return Event.model_validate(
            self._call("POST", f"/v1/runs/{run_id}/approvals/{call_id}", json={"approve": True})
        )

    def deny(self, run_id: str, call_id: str, reason: str = "") -> Event:
        return Event.model_validate(
            self._call(
                "POST",
                f"/v1/runs/{run_id}/approvals/{call_id}",
                json={"approve": False, "reason": reason},
            )
        )

    def fork(self, run_id: str, seq: int, agent_version: int | None = None) -> Run:
        body: dict[str, Any] = {"seq": seq}
        if agent_version is not None:
            body["agent_version"] = agent_version
        return Run.model_validate(self._call("POST", f"/v1/runs/{run_id}/fork", json=body))

    def events(self, run_id: str, after: int = 0) -> builtins.list[Event]:
        return [
            Event.model_validate(e)
            for e in self._call("GET", f"/v1/runs/{run_id}/events", params={"after": after})
        ]

    def stream(
        self,
        run_id: str,
        after: int = 0,
        *,
        include_ephemeral: bool = True,
        max_reconnects: int | None = None,
    ) -> Iterator[Event]:
        """Durable events in order, exactly once, until the run ends; reconnects with
        Last-Event-ID after a dropped connection. Token deltas (`ephemeral`) are live only."""
        last = after
        failures = 0
        while True:
            try:
                headers = {"Last-Event-ID": str(last)} if last else {}
                with self._http.stream(
                    "GET",
                    f"/v1/runs/{run_id}/events/stream",
                    headers=headers,
                    timeout=httpx.Timeout(10, read=60),
                ) as r:
                    if not r.is_success:
                        r.read()
                        _raise_for(r)
                    for event_id, _kind, data in _parse_sse(r.iter_lines()):
                        event = Event.model_validate(
                            {**json.loads(data), "ephemeral": event_id is None}
                        )
                        if event.ephemeral:
                            if include_ephemeral:
                                yield event
                            continue
                        if event.seq is None or event.seq <= last:
                            continue
                        last = event.seq
                        failures = 0
                        yield event
                        if event.type in TERMINAL_EVENTS:
                            return
                if self.get(run_id).done and not self.events(run_id, after=last):
                    return
            except (httpx.TransportError, httpx.RemoteProtocolError):
                failures += 1
                if max_reconnects is not None and failures > max_reconnects:
                    raise
                time.sleep(min(self._reconnect_delay * failures, 5.0))

    def wait(self, run_id: str, timeout: float | None = None, poll: float = 0.5) -> Run:
        """Block until the run ends; TimeoutError after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            run = self.get(run_id)
            if run.done:
                return run
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"run {run_id} still {run.status} after {timeout}s")
            time.sleep(poll)


class Client:
    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        token: str | None = None,
        *,
        timeout: float = 30.0,
        reconnect_delay: float = 0.5,
    ):
        self._http = httpx.Client(base_url=base_url, headers=_headers(token), timeout=timeout)
        self.agents = _Agents(self._http)
        self.runs = _Runs(self._http, reconnect_delay)

    def health(self) -> dict[str, Any]:
        r = self._http.get("/v1/health")
        _raise_for(r)
        return r.json()

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------ async


class _AsyncAgents:
    def __init__(self, http: httpx.AsyncClient):
        self._http = http

    async def create(self, spec: dict[str, Any]) -> Agent:
        r = await self._http.post("/v1/agents", json={"spec": spec})
        _raise_for(r)
        return Agent.model_validate(r.json())

    async def create_from_file(self, path: str | Path) -> Agent:
        r = await self._http.post("/v1/agents", json=_agent_body(path))
        _raise_for(r)
        return Agent.model_validate(r.json())


class _AsyncRuns:
    def __init__(self, http: httpx.AsyncClient, reconnect_delay: float):
        self._http = http
        self._reconnect_delay = reconnect_delay

    async def _call(self, method: str, path: str, **kw: Any) -> Any:
        r = await self._http.request(method, path, **kw)
        _raise_for(r)
        return r.json()

    async def start(
        self,
        agent: str | None = None,
        *,
        input: str | None = None,
        spec: dict[str, Any] | None = None,
        version: int | None = None,
    ) -> Run:
        body = {"agent": agent, "spec": spec, "input": input, "version": version}
        return Run.model_validate(
            await self._call(
                "POST", "/v1/runs", json={k: v for k, v in body.items() if v is not None}
            )
        )

    async def get(self, run_id: str) -> Run:
        return Run.model_validate(await self._call("GET", f"/v1/runs/{run_id}"))

    async def cancel(self, run_id: str) -> str:
        return str((await self._call("POST", f"/v1/runs/{run_id}/cancel"))["outcome"])

    async def message(self, run_id: str, content: str) -> Event:
        return Event.model_validate(
            await self._call("POST", f"/v1/runs/{run_id}/messages", json={"content": content})
        )

    async def stream(
        self, run_id: str, after: int = 0, *, include_ephemeral: bool = True
    ) -> AsyncIterator[Event]:
        """Like `Client.runs.stream`: every durable event once, in order, reconnecting."""
        last = after
        failures = 0
        while True:
            try:
                headers = {"Last-Event-ID": str(last)} if last else {}
                async with self._http.stream(
                    "GET",
                    f"/v1/runs/{run_id}/events/stream",
                    headers=headers,
                    timeout=httpx.Timeout(10, read=60),
                ) as r:
                    if not r.is_success:
                        await r.aread()
                        _raise_for(r)
                    buffer: list[str] = []
                    async for line in r.aiter_lines():
                        buffer.append(line)
                        if line != "":
                            continue
                        for event_id, _kind, data in _parse_sse(iter(buffer)):
                            event = Event.model_validate(
                                {**json.loads(data), "ephemeral": event_id is None}
                            )
                            if event.ephemeral:
                                if include_ephemeral:
                                    yield event
                                continue
                            if event.seq is None or event.seq <= last:
                                continue
                            last = event.seq
                            failures = 0
                            yield event
                            if event.type in TERMINAL_EVENTS:
                                return
                        buffer = []
                if (await self.get(run_id)).done and not await self.events_after(run_id, last):
                    return
            except (httpx.TransportError, httpx.RemoteProtocolError):
                failures += 1
                await asyncio.sleep(min(self._reconnect_delay * failures, 5.0))

    async def events_after(self, run_id: str, after: int) -> list[Event]:
        return [
            Event.model_validate(e)
            for e in await self._call("GET", f"/v1/runs/{run_id}/events", params={"after": after})
        ]

    async def wait(self, run_id: str, timeout: float | None = None, poll: float = 0.5) -> Run:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            run = await self.get(run_id)
            if run.done:
                return run
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"run {run_id} still {run.status} after {timeout}s")
            await asyncio.sleep(poll)


class AsyncClient:
    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        token: str | None = None,
        *,
        timeout: float = 30.0,
        reconnect_delay: float = 0.5,
    ):
        self._http = httpx.AsyncClient(base_url=base_url, headers=_headers(token), timeout=timeout)
        self.agents = _AsyncAgents(self._http)
        self.runs = _AsyncRuns(self._http, reconnect_delay)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
