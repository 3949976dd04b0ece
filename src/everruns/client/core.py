"""The SDK's one request/response core, shared by the sync and async shells.

Everything here is I/O-free: each API operation is a `Call` (method, path, query, body
and how to parse the reply), errors become `ApiError`, the SSE stream is an `EventStream`
state machine fed line by line, and `RetryPolicy` says how long to wait before the
stream reconnects. `sync.py` and `aio.py` only send the calls (httpx.Client vs
httpx.AsyncClient) and sleep (time.sleep vs asyncio.sleep), so the two clients cannot
drift apart.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx

from everruns.client.models import (
    TERMINAL_EVENTS,
    Agent,
    ApiError,
    Delivery,
    Event,
    MemoryItem,
    Receipt,
    Run,
    Schedule,
    Webhook,
)

T = TypeVar("T")

#: Errors after which a stream reconnects (the server went away or cut the connection).
RECONNECTABLE: tuple[type[Exception], ...] = (httpx.TransportError, httpx.RemoteProtocolError)
#: A stream may stay silent between events (the server sends keep-alives within this).
STREAM_TIMEOUT = httpx.Timeout(10, read=60)


def auth_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def raise_for(response: httpx.Response) -> None:
    """An `ApiError` carrying the problem details of a non-2xx reply."""
    if response.is_success:
        return
    try:
        problem = response.json()
    except ValueError:
        problem = {"title": response.reason_phrase, "detail": response.text[:500]}
    if not isinstance(problem, dict):
        problem = {"title": response.reason_phrase, "detail": str(problem)[:500]}
    raise ApiError(response.status_code, problem)


STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True)
class Call(Generic[T]):
    """One API operation: what to send and how to read the answer.

    A state-changing call carries an `Idempotency-Key` (a fresh one unless the caller
    gave `key`), the same on every retry, so a retried call has one effect."""

    method: str
    path: str
    parse: Callable[[Any], T]
    params: dict[str, Any] | None = None
    body: Any = None
    content: bytes | None = None  # a raw request body (a blob upload), instead of `body`
    raw: bool = False  # parse the reply's bytes, not its JSON (a file download)
    key: str | None = None

    def __post_init__(self) -> None:
        if self.key is None and self.method in STATE_CHANGING:
            object.__setattr__(self, "key", str(uuid.uuid4()))

    def headers(self) -> dict[str, str]:
        return {"Idempotency-Key": self.key} if self.key else {}

    def result(self, response: httpx.Response) -> T:
        raise_for(response)
        if self.raw:
            return self.parse(response.content)
        return self.parse(None if response.status_code == 204 else response.json())

    @property
    def send_kwargs(self) -> dict[str, Any]:
        """What the shells pass to httpx's request() besides method and path."""
        if self.content is not None:
            return {"params": self.params, "content": self.content}
        return {"params": self.params, "json": self.body}


@dataclass(frozen=True)
class SendPolicy:
    """How a call is retried: after a connection error or a 5xx reply, `attempts` times in
    all, waiting `delay * 2**n` (capped at `max_delay`). Safe for state-changing calls
    because they carry an idempotency key; a GET is safe anyway."""

    attempts: int = 4
    delay: float = 0.25
    max_delay: float = 4.0

    def retry_after(self, attempt: int, response: httpx.Response | None) -> float | None:
        """The wait before attempt `attempt + 1`, or None to stop (give the answer back).
        `response` None: the attempt failed with a connection error."""
        if attempt >= self.attempts:
            return None
        if response is not None and response.status_code < 500:
            return None
        return min(self.delay * 2 ** (attempt - 1), self.max_delay)


#: Errors after which a call is retried (the request may or may not have arrived).
RETRYABLE: tuple[type[Exception], ...] = (httpx.TransportError,)


def _outcome(reply: Any) -> str:
    return str(reply["outcome"])


def _no_none(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _run_page(page: Any) -> tuple[list[Run], str | None]:
    return [Run.model_validate(r) for r in page["items"]], page["next_cursor"]


def _events(items: Any) -> list[Event]:
    return [Event.model_validate(e) for e in items]


def _agents(items: Any) -> list[Agent]:
    return [Agent.model_validate(a) for a in items]


def _as_dict(reply: Any) -> dict[str, Any]:
    return dict(reply)


# ------------------------------------------------------------------ operations


def health() -> Call[dict[str, Any]]:
    return Call("GET", "/v1/health", _as_dict)


def create_agent(spec: dict[str, Any]) -> Call[Agent]:
    return Call("POST", "/v1/agents", Agent.model_validate, body={"spec": spec})


def create_agent_from_file(path: str | Path) -> Call[Agent]:
    body = {"yaml": Path(path).read_text(encoding="utf-8")}
    return Call("POST", "/v1/agents", Agent.model_validate, body=body)


def list_agents() -> Call[list[Agent]]:
    return Call("GET", "/v1/agents", _agents)


def get_agent(name: str, version: int | None) -> Call[Agent]:
    path = f"/v1/agents/{name}" + (f"/versions/{version}" if version else "")
    return Call("GET", path, Agent.model_validate)


def _schedules(items: Any) -> list[Schedule]:
    return [Schedule.model_validate(s) for s in items]


def _nothing(_reply: Any) -> None:
    return None


def create_schedule(
    agent: str | None, spec: dict[str, Any] | None, schedule: str | None, version: int | None
) -> Call[Schedule]:
    body = _no_none({"agent": agent, "spec": spec, "schedule": schedule, "version": version})
    return Call("POST", "/v1/schedules", Schedule.model_validate, body=body)


def list_schedules() -> Call[list[Schedule]]:
    return Call("GET", "/v1/schedules", _schedules)


def delete_schedule(agent: str) -> Call[None]:
    return Call("DELETE", f"/v1/schedules/{agent}", _nothing)


def set_schedule(agent: str, action: str) -> Call[Schedule]:
    """pause or resume."""
    return Call("POST", f"/v1/schedules/{agent}/{action}", Schedule.model_validate)


def _names(items: Any) -> list[str]:
    return [str(n) for n in items]


def put_secret(name: str, value: str, allow_urls: list[str]) -> Call[None]:
    body = {"value": value, "allow_urls": allow_urls}
    return Call("PUT", f"/v1/secrets/{name}", _nothing, body=body)


def list_secrets() -> Call[list[str]]:
    return Call("GET", "/v1/secrets", _names)


def _memory(page: Any) -> list[MemoryItem]:
    return [MemoryItem.model_validate(m) for m in page["items"]]


def list_memory(agent: str) -> Call[list[MemoryItem]]:
    return Call("GET", f"/v1/agents/{agent}/memory", _memory)


def delete_memory(agent: str, key: str) -> Call[None]:
    return Call("DELETE", f"/v1/agents/{agent}/memory/{key}", _nothing)


def clear_memory(agent: str) -> Call[None]:
    return Call("DELETE", f"/v1/agents/{agent}/memory", _nothing)


def start_run(
    agent: str | None,
    input: str | None,
    spec: dict[str, Any] | None,
    version: int | None,
    idempotency_key: str | None = None,
    webhooks: list[dict[str, Any]] | None = None,
    files: dict[str, str] | None = None,
) -> Call[Run]:
    """`files`: workspace path -> the sha256 of an uploaded blob (`upload_blob`)."""
    body = _no_none(
        {
            "agent": agent,
            "spec": spec,
            "input": input,
            "version": version,
            "webhooks": webhooks,
            "files": files,
        }
    )
    return Call("POST", "/v1/runs", Run.model_validate, body=body, key=idempotency_key)


def upload_blob(data: bytes) -> Call[str]:
    """Store a file's bytes on the server; its sha256 (for `start_run`'s files)."""
    return Call("POST", "/v1/blobs", lambda reply: str(reply["sha256"]), content=data)


def list_files(run_id: str) -> Call[list[dict[str, Any]]]:
    return Call("GET", f"/v1/runs/{run_id}/files", lambda items: [dict(i) for i in items])


def get_file(run_id: str, path: str) -> Call[bytes]:
    return Call("GET", f"/v1/runs/{run_id}/files/{quote(path)}", bytes, raw=True)


def files_zip(run_id: str) -> Call[bytes]:
    return Call("GET", f"/v1/runs/{run_id}/files.zip", bytes, raw=True)


def get_run(run_id: str) -> Call[Run]:
    return Call("GET", f"/v1/runs/{run_id}", Run.model_validate)


def list_runs(
    status: str | None, agent: str | None, limit: int, cursor: str | None, q: str | None = None
) -> Call[tuple[list[Run], str | None]]:
    params = _no_none({"status": status, "agent": agent, "limit": limit, "cursor": cursor, "q": q})
    return Call("GET", "/v1/runs", _run_page, params=params)


def control(run_id: str, action: str) -> Call[str]:
    """cancel, pause or resume: the reply's `outcome` ("requested", "paused", ...)."""
    return Call("POST", f"/v1/runs/{run_id}/{action}", _outcome)


def message(run_id: str, content: str, idempotency_key: str | None = None) -> Call[Event]:
    body = {"content": content}
    path = f"/v1/runs/{run_id}/messages"
    return Call("POST", path, Event.model_validate, body=body, key=idempotency_key)


def steer(run_id: str, content: str, idempotency_key: str | None = None) -> Call[Receipt]:
    body = {"content": content}
    path = f"/v1/runs/{run_id}/steer"
    return Call("POST", path, Receipt.model_validate, body=body, key=idempotency_key)


def interrupt(run_id: str, idempotency_key: str | None = None) -> Call[Receipt]:
    path = f"/v1/runs/{run_id}/interrupt"
    return Call("POST", path, Receipt.model_validate, key=idempotency_key)


def create_webhook(
    url: str, events: list[str], secret_ref: str | None, run_id: str | None
) -> Call[Webhook]:
    body = _no_none({"url": url, "events": events, "secret_ref": secret_ref, "run_id": run_id})
    return Call("POST", "/v1/webhooks", Webhook.model_validate, body=body)


def list_webhooks() -> Call[list[Webhook]]:
    return Call("GET", "/v1/webhooks", lambda items: [Webhook.model_validate(w) for w in items])


def delete_webhook(webhook_id: str) -> Call[None]:
    return Call("DELETE", f"/v1/webhooks/{webhook_id}", lambda _reply: None)


def deliveries(run_id: str | None, status: str | None) -> Call[list[Delivery]]:
    params = _no_none({"run_id": run_id, "status": status})
    return Call(
        "GET",
        "/v1/webhooks/deliveries",
        lambda items: [Delivery.model_validate(d) for d in items],
        params=params,
    )


def decide(run_id: str, call_id: str, approve: bool, reason: str = "") -> Call[Event]:
    body: dict[str, Any] = {"approve": True} if approve else {"approve": False, "reason": reason}
    path = f"/v1/runs/{run_id}/approvals/{call_id}"
    return Call("POST", path, Event.model_validate, body=body)


def set_limits(
    run_id: str,
    *,
    max_cost_usd: float | None = None,
    max_tokens: int | None = None,
    max_steps: int | None = None,
    max_llm_calls: int | None = None,
    deadline: float | str | None = None,
) -> Call[Event]:
    """Raise (or lower) a run's limits: the journaled `limits.changed`. Only the limits
    given change; `deadline` is from now (seconds, or "2h")."""
    body = _no_none(
        {
            "max_cost_usd": max_cost_usd,
            "max_tokens": max_tokens,
            "max_steps": max_steps,
            "max_llm_calls": max_llm_calls,
            "deadline": deadline,
        }
    )
    return Call("POST", f"/v1/runs/{run_id}/limits", Event.model_validate, body=body)


def fork(run_id: str, seq: int, agent_version: int | None) -> Call[Run]:
    body = _no_none({"seq": seq, "agent_version": agent_version})
    return Call("POST", f"/v1/runs/{run_id}/fork", Run.model_validate, body=body)


def events(run_id: str, after: int) -> Call[list[Event]]:
    return Call("GET", f"/v1/runs/{run_id}/events", _events, params={"after": after})


# ------------------------------------------------------------------ waiting and retrying


@dataclass(frozen=True)
class RetryPolicy:
    """How long a stream waits before reconnecting: linear backoff (`delay` times failures in
    a row) capped at `max_delay`. How many failures it tolerates is the caller's
    `max_reconnects` (see `EventStream.connection_lost`)."""

    delay: float = 0.5
    max_delay: float = 5.0

    def backoff(self, failures: int) -> float:
        return min(self.delay * failures, self.max_delay)


@dataclass
class Deadline:
    """`runs.wait`'s clock: TimeoutError once `timeout` seconds have passed."""

    run_id: str
    timeout: float | None
    started: float = field(default_factory=time.monotonic)

    def check(self, run: Run) -> bool:
        """True when the run is done; raises TimeoutError when the time is up."""
        if run.done:
            return True
        if self.timeout is not None and time.monotonic() - self.started >= self.timeout:
            raise TimeoutError(f"run {self.run_id} still {run.status} after {self.timeout}s")
        return False


# ------------------------------------------------------------------ server-sent events


class SseParser:
    """Incremental SSE parser: feed lines, get (id, event, data) per complete message."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.event_id: str | None = None
        self.event_type: str | None = None
        self.data: list[str] = []

    def feed(self, line: str) -> tuple[str | None, str | None, str] | None:
        if line == "":
            message = (self.event_id, self.event_type, "\n".join(self.data)) if self.data else None
            self._reset()
            return message
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "id":
            self.event_id = value
        elif name == "event":
            self.event_type = value
        elif name == "data":
            self.data.append(value)
        return None


class EventStream:
    """One `runs.stream`: durable events in order, exactly once, until the run ends.

    The shells open a connection with `request_headers()`, `feed` it every line, stop when
    `ended`, call `connection_lost()` after a transport error (it returns the delay before
    reconnecting, or None to give up) and `finished_without_terminal()` when the server
    closed the stream cleanly before a terminal event.
    """

    def __init__(
        self,
        run_id: str,
        after: int,
        include_ephemeral: bool,
        max_reconnects: int | None,
        policy: RetryPolicy,
    ):
        self.path = f"/v1/runs/{run_id}/events/stream"
        self.run_id = run_id
        self.last = after
        self.include_ephemeral = include_ephemeral
        self.max_reconnects = max_reconnects
        self.policy = policy
        self.failures = 0
        self.ended = False
        self._parser = SseParser()

    def request_headers(self) -> dict[str, str]:
        self._parser = SseParser()  # a new connection starts a new message
        return {"Last-Event-ID": str(self.last)} if self.last else {}

    def feed(self, line: str) -> Event | None:
        message = self._parser.feed(line)
        if message is None:
            return None
        event_id, _kind, data = message
        event = Event.model_validate({**json.loads(data), "ephemeral": event_id is None})
        if event.ephemeral:
            return event if self.include_ephemeral else None
        if event.seq is None or event.seq <= self.last:
            return None  # replayed after a reconnect: already delivered
        self.last = event.seq
        self.failures = 0
        self.ended = event.type in TERMINAL_EVENTS
        return event

    def connection_lost(self) -> float | None:
        self.failures += 1
        if self.max_reconnects is not None and self.failures > self.max_reconnects:
            return None
        return self.policy.backoff(self.failures)

    @staticmethod
    def finished_without_terminal(run: Run, newer: list[Event]) -> bool:
        """After a clean close: the run ended and nothing is left to deliver."""
        return run.done and not newer
