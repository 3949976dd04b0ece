"""The blocking shell over `core`: `Client`. Mirrors `aio.AsyncClient` method for method
(tests/client/test_parity.py holds them together).

The two shells repeat each other by design (as httpx's Client and AsyncClient do): every
method builds its request with `core` and sends it, `await`ed here and not there. Whatever is logic (paths, bodies, parsing, errors, retries) lives in
`core` once; what `duplicates` reports between the two files is that deliberate mirror."""

from __future__ import annotations

import builtins
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx

from everruns.client import core
from everruns.client.models import (
    Agent,
    Delivery,
    Event,
    MemoryItem,
    Receipt,
    Run,
    Schedule,
    Webhook,
)

T = TypeVar("T")


class _Shell:
    def __init__(self, http: httpx.Client):
        self._http = http
        self._send_policy = core.SendPolicy()

    def _send(self, call: core.Call[T]) -> T:
        """Send, retrying connection errors and 5xx replies per `core.SendPolicy` (a
        state-changing call keeps its idempotency key across the retries)."""
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self._http.request(
                    call.method, call.path, headers=call.headers(), **call.send_kwargs
                )
            except core.RETRYABLE:
                delay = self._send_policy.retry_after(attempt, None)
                if delay is None:
                    raise
                time.sleep(delay)
                continue
            delay = self._send_policy.retry_after(attempt, response)
            if delay is None:
                return call.result(response)
            time.sleep(delay)


class Agents(_Shell):
    def create(self, spec: dict[str, Any]) -> Agent:
        return self._send(core.create_agent(spec))

    def create_from_file(self, path: str | Path) -> Agent:
        return self._send(core.create_agent_from_file(path))

    def list(self) -> builtins.list[Agent]:
        return self._send(core.list_agents())

    def get(self, name: str, version: int | None = None) -> Agent:
        return self._send(core.get_agent(name, version))

    def list_memory(self, agent: str) -> builtins.list[MemoryItem]:
        """The notes `agent` keeps across runs, oldest first."""
        return self._send(core.list_memory(agent))

    def delete_memory(self, agent: str, key: str) -> None:
        """Forget one note (ApiError 404 if there is none)."""
        self._send(core.delete_memory(agent, key))

    def clear_memory(self, agent: str) -> None:
        """Forget every note of `agent`."""
        self._send(core.clear_memory(agent))


class Schedules(_Shell):
    def create(
        self,
        agent: str | None = None,
        *,
        spec: dict[str, Any] | None = None,
        schedule: str | None = None,
        version: int | None = None,
    ) -> Schedule:
        """Schedule a stored agent (its latest version at each fire, or `version`) or an
        inline spec (stored and pinned); replaces the agent's schedule."""
        return self._send(core.create_schedule(agent, spec, schedule, version))

    def list(self) -> builtins.list[Schedule]:
        return self._send(core.list_schedules())

    def delete(self, agent: str) -> None:
        self._send(core.delete_schedule(agent))

    def pause(self, agent: str) -> Schedule:
        return self._send(core.set_schedule(agent, "pause"))

    def resume(self, agent: str) -> Schedule:
        return self._send(core.set_schedule(agent, "resume"))


class Secrets(_Shell):
    def put(self, name: str, value: str, allow_urls: builtins.list[str]) -> None:
        """Store a secret for `model.credential: NAME`, sent only to `allow_urls` patterns."""
        self._send(core.put_secret(name, value, allow_urls))

    def list(self) -> builtins.list[str]:
        """The stored secrets' names (never their values)."""
        return self._send(core.list_secrets())


class Webhooks(_Shell):
    """Global webhooks (every run's events), and the deliveries of all webhooks."""

    def create(
        self,
        url: str,
        events: builtins.list[str],
        *,
        secret_ref: str | None = None,
        run_id: str | None = None,
    ) -> Webhook:
        return self._send(core.create_webhook(url, events, secret_ref, run_id))

    def list(self) -> builtins.list[Webhook]:
        return self._send(core.list_webhooks())

    def delete(self, webhook_id: str) -> None:
        self._send(core.delete_webhook(webhook_id))

    def deliveries(
        self, *, run_id: str | None = None, status: str | None = None
    ) -> builtins.list[Delivery]:
        return self._send(core.deliveries(run_id, status))


class Runs(_Shell):
    def __init__(self, http: httpx.Client, policy: core.RetryPolicy):
        super().__init__(http)
        self._policy = policy

    def start(
        self,
        agent: str | None = None,
        *,
        input: str | None = None,
        spec: dict[str, Any] | None = None,
        version: int | None = None,
        idempotency_key: str | None = None,
        webhooks: builtins.list[dict[str, Any]] | None = None,
        files: dict[str, bytes] | None = None,
    ) -> Run:
        """Start a run. `idempotency_key`: a repeat with the same key returns this run;
        `webhooks`: [{url, events, secret_ref}] told about this run's events; `files`: the
        run's workspace before its first step (path -> content)."""
        shas = {p: self._send(core.upload_blob(data)) for p, data in (files or {}).items()}
        return self._send(
            core.start_run(agent, input, spec, version, idempotency_key, webhooks, shas or None)
        )

    def files(self, run_id: str) -> builtins.list[dict[str, Any]]:
        """The run's workspace files: path, size, sha256, and the seq/step that changed each."""
        return self._send(core.list_files(run_id))

    def file(self, run_id: str, path: str) -> bytes:
        return self._send(core.get_file(run_id, path))

    def files_zip(self, run_id: str) -> bytes:
        return self._send(core.files_zip(run_id))

    def get(self, run_id: str) -> Run:
        return self._send(core.get_run(run_id))

    def list(
        self,
        *,
        status: str | None = None,
        agent: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
        q: str | None = None,
    ) -> tuple[builtins.list[Run], str | None]:
        """Runs newest first, a page at a time; `q` searches ids, inputs and results."""
        return self._send(core.list_runs(status, agent, limit, cursor, q))

    def cancel(self, run_id: str) -> str:
        return self._send(core.control(run_id, "cancel"))

    def pause(self, run_id: str) -> str:
        return self._send(core.control(run_id, "pause"))

    def resume(self, run_id: str) -> str:
        return self._send(core.control(run_id, "resume"))

    def message(self, run_id: str, content: str, idempotency_key: str | None = None) -> Event:
        """A user message: folded in once the current LLM call and tool calls resolve."""
        return self._send(core.message(run_id, content, idempotency_key))

    def steer(self, run_id: str, content: str, idempotency_key: str | None = None) -> Receipt:
        """Redirect the run now: journaled at once, injected at the next step boundary of
        the current turn (tool calls the model planned but not started are skipped)."""
        return self._send(core.steer(run_id, content, idempotency_key))

    def interrupt(self, run_id: str, idempotency_key: str | None = None) -> Receipt:
        """Stop the in-flight LLM call and tools now and park the run for a message."""
        return self._send(core.interrupt(run_id, idempotency_key))

    def approve(self, run_id: str, call_id: str) -> Event:
        return self._send(core.decide(run_id, call_id, approve=True))

    def deny(self, run_id: str, call_id: str, reason: str = "") -> Event:
        return self._send(core.decide(run_id, call_id, approve=False, reason=reason))

    def set_limits(
        self,
        run_id: str,
        *,
        max_cost_usd: float | None = None,
        max_tokens: int | None = None,
        max_steps: int | None = None,
        max_llm_calls: int | None = None,
        deadline: float | str | None = None,
    ) -> Event:
        """Raise (or lower) a run's limits, journaled as `limits.changed`; a run that
        failed on a limit continues with `resume` once it is raised. `deadline`: from now."""
        call = core.set_limits(
            run_id,
            max_cost_usd=max_cost_usd,
            max_tokens=max_tokens,
            max_steps=max_steps,
            max_llm_calls=max_llm_calls,
            deadline=deadline,
        )
        return self._send(call)

    def fork(self, run_id: str, seq: int, agent_version: int | None = None) -> Run:
        return self._send(core.fork(run_id, seq, agent_version))

    def events(self, run_id: str, after: int = 0) -> builtins.list[Event]:
        return self._send(core.events(run_id, after))

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
        stream = core.EventStream(run_id, after, include_ephemeral, max_reconnects, self._policy)
        while True:
            try:
                with self._http.stream(
                    "GET",
                    stream.path,
                    headers=stream.request_headers(),
                    timeout=core.STREAM_TIMEOUT,
                ) as response:
                    if not response.is_success:
                        response.read()
                        core.raise_for(response)
                    for line in response.iter_lines():
                        event = stream.feed(line)
                        if event is not None:
                            yield event
                        if stream.ended:
                            return
                if stream.finished_without_terminal(
                    self.get(run_id), self.events(run_id, after=stream.last)
                ):
                    return
            except core.RECONNECTABLE:
                delay = stream.connection_lost()
                if delay is None:
                    raise
                time.sleep(delay)

    def wait(self, run_id: str, timeout: float | None = None, poll: float = 0.5) -> Run:
        """Block until the run ends; TimeoutError after `timeout` seconds."""
        deadline = core.Deadline(run_id, timeout)
        while True:
            run = self.get(run_id)
            if deadline.check(run):
                return run
            time.sleep(poll)


class Client:
    """The everruns HTTP API, blocking. Use as a context manager or call `close()`."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        token: str | None = None,
        *,
        timeout: float = 30.0,
        reconnect_delay: float = 0.5,
    ):
        self._http = httpx.Client(
            base_url=base_url, headers=core.auth_headers(token), timeout=timeout
        )
        self._meta = _Shell(self._http)
        self.agents = Agents(self._http)
        self.webhooks = Webhooks(self._http)
        self.schedules = Schedules(self._http)
        self.secrets = Secrets(self._http)
        self.runs = Runs(self._http, core.RetryPolicy(delay=reconnect_delay))

    def health(self) -> dict[str, Any]:
        return self._meta._send(core.health())

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
