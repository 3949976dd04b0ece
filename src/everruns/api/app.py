"""The HTTP API: agents, runs, events (JSON and SSE), health, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Path, Query, Request
from fastapi.responses import PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from everruns.api import documented, idempotency, problems
from everruns.api.deps import StoreDep, store_of
from everruns.api.feed import EventFeed
from everruns.api.files import add_file_routes, input_manifest
from everruns.api.idempotency import IdempotencyKeys
from everruns.api.metrics import exposition as metrics_text
from everruns.api.models import (
    AgentCreate,
    AgentOut,
    Decision,
    EventOut,
    ForkCreate,
    LimitsChange,
    MessageCreate,
    Outcome,
    Receipt,
    RunCreate,
    RunOut,
    RunPage,
    SecretPut,
)
from everruns.api.origin import OriginGuard
from everruns.api.problems import Problem
from everruns.api.tracing import TraceRequests
from everruns.api.verbs import add_verb_routes
from everruns.api.webhooks import add_webhook_routes, url_checker
from everruns.api.wire import run_to_api
from everruns.core.budget import check_change
from everruns.core.events import TERMINAL_EVENTS, TERMINAL_STATUSES, EventType
from everruns.core.state import fold
from everruns.engine import tracing
from everruns.engine.broker import Broker
from everruns.engine.worker import Worker
from everruns.policy import check_spec
from everruns.secretbox import SecretsUnavailable, encrypt
from everruns.settings import Settings, load_settings
from everruns.spec import AgentSpec, parse_spec, spec_from_yaml
from everruns.store import Store, StoreError, new_id
from everruns.store.waits import wait_for_event
from everruns.tools.registry import ToolSpecError, build_tools
from everruns.ui import mount_ui

log = logging.getLogger("everruns.api")
INT32 = 2**31 - 1  # integer columns: larger numbers are refused as invalid, not crashed on
SECRET_NAME = r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$"
STATUSES = ("queued", "running", "waiting", "paused", "completed", "failed", "cancelled")


@dataclass
class ApiConfig:
    database_url: str | None = None
    auth_required: bool = False
    embedded_worker: bool = True
    worker_concurrency: int = 16
    lease_ttl: float = 15.0
    max_body_bytes: int = 2_000_000
    keepalive: float = 15.0
    # Browser origins allowed to make state-changing requests (only with auth on).
    cors_origins: tuple[str, ...] = ()
    settings: Settings | None = None  # default: load_settings()


class BodyLimit:
    """Refuse request bodies over a size (413), whether or not they declare a length."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _too_large(scope, receive, send, self.limit)
            return
        seen = 0

        async def counting() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, counting, send)


class BodyTooLarge(Problem, StarletteHTTPException):
    """Raised while FastAPI reads a body without a declared length: it passes an
    HTTPException through (any other error there becomes a 400), and the Problem
    handler renders it."""

    def __init__(self, limit: int):
        detail = f"the body exceeds {limit} bytes"
        Problem.__init__(self, 413, "too-large", "Request too large", detail)
        StarletteHTTPException.__init__(self, 413, detail)


async def _too_large(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
    response = problems.problem_response(
        413, "too-large", "Request too large", f"the body exceeds {limit} bytes", scope.get("path")
    )
    await response(scope, receive, send)


def _run_out(row: Any, *, brief: bool = False) -> RunOut:
    return RunOut.model_validate(run_to_api(row, brief=brief))


def _sse(event: dict[str, Any], *, with_id: bool = True) -> bytes:
    lines = []
    if with_id and "seq" in event:
        lines.append(f"id: {event['seq']}")
    lines.append(f"event: {event['type']}")
    lines.append("data: " + json.dumps(event, ensure_ascii=False, default=str))
    return ("\n".join(lines) + "\n\n").encode()


def create_app(config: ApiConfig | None = None) -> FastAPI:
    config = config or ApiConfig()
    settings = config.settings if config.settings is not None else load_settings()
    broker = Broker()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = await Store.open(config.database_url)
        feed = EventFeed(store)
        await feed.start()
        app.state.store = store
        app.state.feed = feed
        worker: Worker | None = None
        worker_task = None
        if config.embedded_worker:
            worker = Worker(
                store,
                concurrency=config.worker_concurrency,
                lease_ttl=config.lease_ttl,
                broker=broker,
                poll_interval=0.25,
                settings=settings,
            )
            worker_task = asyncio.create_task(worker.run())
        app.state.worker = worker
        try:
            yield
        finally:
            if worker is not None and worker_task is not None:
                worker.stop()
                with contextlib.suppress(Exception):
                    await worker_task
            await feed.stop()
            await store.close()

    app = FastAPI(
        title="everruns",
        version="0.1.0",
        description="Durable execution for long-lived AI agents.",
        lifespan=lifespan,
    )
    problems.install(app)
    app.add_middleware(IdempotencyKeys)  # inside the body limit: it reads the body first
    documented.install(app)
    app.add_middleware(BodyLimit, limit=config.max_body_bytes)
    sink = tracing.sink()
    if sink is not None:  # request spans linked to the runs they touch (OTEL_* set)
        app.add_middleware(TraceRequests, sink=sink)
    if config.cors_origins and config.auth_required:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.cors_origins),
            allow_methods=["*"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID", "Idempotency-Key"],
        )
    # Added last, so it runs first: a refused request reaches nothing else.
    app.add_middleware(
        OriginGuard, auth_required=config.auth_required, cors_origins=config.cors_origins
    )

    async def authorize(
        request: Request, authorization: Annotated[str | None, Header()] = None
    ) -> None:
        if not config.auth_required:
            return
        token = None
        if authorization and authorization.lower().startswith("bearer "):
            token = authorization[7:].strip()
        elif request.url.path.endswith("/events/stream"):
            # EventSource (the web UI) cannot set headers: the SSE stream takes ?access_token=.
            token = request.query_params.get("access_token")
        if not token:
            raise Problem(
                401,
                "unauthorized",
                "Unauthorized",
                "send an API token as `Authorization: Bearer <token>`",
            )
        name = await store_of(request).verify_token(token)
        if name is None:
            raise Problem(
                401, "unauthorized", "Unauthorized", "the API token is invalid or revoked"
            )

    auth = [Depends(authorize)]
    _webhook_url = url_checker(settings)

    # ------------------------------------------------------------ health

    @app.get("/v1/health", tags=["health"])
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/ready", tags=["health"])
    async def ready(store: StoreDep) -> dict[str, str]:
        try:
            await store.ping()
            current, revision, head = await store.health.migrations_current()
        except Exception as exc:
            raise Problem(503, "not-ready", "Not ready", f"database unreachable: {exc}") from None
        if not current:
            raise Problem(
                503,
                "not-ready",
                "Not ready",
                f"database schema at revision {revision or 'none'}, this version needs {head} "
                "(run `everruns db upgrade`)",
            )
        return {"status": "ready", "schema": head}

    @app.get("/metrics", tags=["health"], response_class=PlainTextResponse, dependencies=auth)
    async def metrics(store: StoreDep) -> PlainTextResponse:
        return PlainTextResponse(
            await metrics_text(store), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    @app.get("/v1/health/attention", tags=["health"], dependencies=auth)
    async def attention(store: StoreDep) -> list[dict[str, Any]]:
        """What needs a human (the checks of `everruns doctor`); empty when all is well."""
        return await store.health.attention()

    # ------------------------------------------------------------ agents

    async def _allowed(store: Store, spec: AgentSpec, origin: str = "api") -> None:
        """The operator's policy for a spec from `origin` (422 naming the field)."""
        try:
            check_spec(spec, origin, settings, await store.secret_bindings())
        except ToolSpecError as exc:
            raise _spec_problem(exc) from None

    async def _checked(
        store: Store, spec_data: dict[str, Any] | None, text: str | None
    ) -> AgentSpec:
        if (spec_data is None) == (text is None):
            raise Problem(
                422,
                "validation-error",
                "Invalid request",
                "give exactly one of `spec` (JSON) or `yaml` (text)",
            )
        spec = spec_from_yaml(text, "spec") if text is not None else parse_spec(spec_data, "spec")
        # `python_path` names directories on the machine of a local spec file: an API spec
        # imports only from the server's path (and `api_specs.python_modules`), so it is dropped.
        spec = spec.model_copy(update={"python_path": None})
        await _allowed(store, spec)  # before build_tools imports any module
        try:
            build_tools(spec, allow_private_networks=settings.allow_private_networks)
        except ToolSpecError as exc:
            raise _spec_problem(exc) from None
        return spec

    @app.post("/v1/agents", tags=["agents"], status_code=201, dependencies=auth)
    async def create_agent(body: AgentCreate, store: StoreDep) -> AgentOut:
        spec = await _checked(store, body.spec, body.yaml)
        version = await store.save_agent(spec, origin="api")
        return AgentOut(name=spec.name, version=version, spec=spec.to_dict())

    @app.get("/v1/agents", tags=["agents"], dependencies=auth)
    async def list_agents(store: StoreDep) -> list[AgentOut]:
        return [AgentOut(**a) for a in await store.list_agents()]

    async def _agent(store: Store, name: str, version: int | None) -> AgentOut:
        try:
            spec = await store.get_agent(name, version)
        except StoreError as exc:
            raise Problem(404, "agent-not-found", "Agent not found", str(exc)) from None
        entry = next((a for a in await store.list_agents() if a["name"] == name), None)
        latest = version or (entry["version"] if entry else 1)
        archived = bool(entry and entry["archived"])  # as GET /v1/agents says
        return AgentOut(name=name, version=latest, spec=spec.to_dict(), archived=archived)

    @app.get("/v1/agents/{name}", tags=["agents"], dependencies=auth)
    async def get_agent(name: str, store: StoreDep) -> AgentOut:
        return await _agent(store, name, None)

    @app.get("/v1/agents/{name}/versions/{version}", tags=["agents"], dependencies=auth)
    async def get_agent_version(
        name: str, version: Annotated[int, Path(ge=1, le=INT32)], store: StoreDep
    ) -> AgentOut:
        return await _agent(store, name, version)

    @app.post("/v1/agents/{name}/archive", tags=["agents"], dependencies=auth)
    async def archive_agent(name: str, store: StoreDep) -> Outcome:
        if not await store.archive_agent(name):
            raise Problem(404, "agent-not-found", "Agent not found", f"no agent {name!r}")
        return Outcome(id=name, outcome="archived")

    # ------------------------------------------------------------ runs

    @app.post("/v1/runs", tags=["runs"], status_code=201, dependencies=auth)
    async def start_run(body: RunCreate, store: StoreDep) -> RunOut:
        if (body.agent is None) == (body.spec is None):
            raise Problem(
                422,
                "validation-error",
                "Invalid request",
                "give exactly one of `agent` (a stored agent's name) or `spec`",
            )
        origin = "api"
        if body.spec is not None:
            spec = await _checked(store, body.spec, None)
        else:
            assert body.agent is not None
            try:
                spec = await store.get_agent(body.agent, body.version)
                # A stored agent keeps the origin of whoever wrote its spec.
                origin = await store.get_agent_origin(body.agent, body.version)
            except StoreError as exc:
                raise Problem(404, "agent-not-found", "Agent not found", str(exc)) from None
            await _allowed(store, spec, origin)
        for hook in body.webhooks:
            await _webhook_url(hook.url)
        manifest = await input_manifest(store, body.files)
        created = {"files": manifest} if manifest else None
        run_id = new_id()  # the run's webhooks exist before the run can send anything
        for hook in body.webhooks:
            await store.webhooks.create(hook.url, hook.events, hook.secret_ref, run_id=run_id)
        await store.create_run(spec, body.input, origin=origin, run_id=run_id, created_data=created)
        _wake(request_app=app)
        return _run_out(await store.get_run(run_id))

    def _wake(request_app: FastAPI) -> None:
        worker = getattr(request_app.state, "worker", None)
        if worker is not None:
            worker.wake()

    @app.get("/v1/runs", tags=["runs"], dependencies=auth)
    async def list_runs(
        store: StoreDep,
        status: Annotated[str | None, Query(pattern="^(" + "|".join(STATUSES) + ")$")] = None,
        agent: Annotated[str | None, Query(max_length=128)] = None,
        q: Annotated[
            str | None, Query(max_length=200, description="Search id, input, result.")
        ] = None,
        parent_id: Annotated[str | None, Query(max_length=40)] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        cursor: Annotated[str | None, Query(max_length=100)] = None,
    ) -> RunPage:
        before = None
        if cursor:
            ts, _, rid = cursor.partition("~")
            try:
                before = (float(ts), rid)
            except ValueError:
                raise Problem(
                    422,
                    "validation-error",
                    "Invalid request",
                    "cursor: not a cursor returned by this API",
                ) from None
        rows = await store.list_runs(
            status=status,
            agent=agent,
            limit=limit + 1,
            before=before,
            parent_id=parent_id,
            search=q,
        )
        page = rows[:limit]
        next_cursor = f"{page[-1].created_at!r}~{page[-1].id}" if len(rows) > limit else None
        return RunPage(items=[_run_out(r, brief=True) for r in page], next_cursor=next_cursor)

    @app.get("/v1/runs/{run_id}", tags=["runs"], dependencies=auth)
    async def get_run(run_id: str, store: StoreDep) -> RunOut:
        return _run_out(await store.get_run(run_id))

    @app.post("/v1/runs/{run_id}/cancel", tags=["runs"], dependencies=auth)
    async def cancel_run(run_id: str, store: StoreDep) -> Receipt:
        """Cancel: `outcome` as always ("cancelled", "requested" when its worker stops it, or
        the status it already had); `seq` is the `run.cancelled` event's (waited for briefly
        when requested)."""
        before = (await store.get_run(run_id)).last_seq
        outcome = await store.cancel(run_id)
        seq = None
        if outcome in ("cancelled", "requested"):
            seq = await wait_for_event(store, run_id, before, frozenset(TERMINAL_EVENTS))
        return Receipt(id=run_id, outcome=outcome, seq=seq)

    @app.post("/v1/runs/{run_id}/pause", tags=["runs"], dependencies=auth)
    async def pause_run(run_id: str, store: StoreDep) -> Outcome:
        return Outcome(id=run_id, outcome=await store.pause(run_id))

    @app.post("/v1/runs/{run_id}/resume", tags=["runs"], dependencies=auth)
    async def resume_run(run_id: str, store: StoreDep) -> Outcome:
        outcome = await store.resume(run_id, by="api")
        _wake(app)
        return Outcome(id=run_id, outcome=outcome)

    @app.post("/v1/runs/{run_id}/limits", tags=["runs"], dependencies=auth)
    async def change_limits(run_id: str, body: LimitsChange, store: StoreDep) -> EventOut:
        """Raise (or lower) a run's limits (`limits.changed`); a run that failed on a limit
        continues with POST /v1/runs/{id}/resume once it is raised."""
        try:
            limits = check_change(body.model_dump(exclude_none=True))
        except ValueError as exc:
            raise Problem(422, "validation-error", "Invalid request", str(exc)) from None
        event = await store.change_limits(run_id, limits, by="api")
        return EventOut(run_id=run_id, **event.to_dict())

    @app.post("/v1/runs/{run_id}/messages", tags=["runs"], status_code=201, dependencies=auth)
    async def send_message(run_id: str, body: MessageCreate, store: StoreDep) -> EventOut:
        event = await store.signal(run_id, EventType.MESSAGE_USER, {"content": body.content})
        _wake(app)
        return EventOut(run_id=run_id, **event.to_dict())

    @app.post("/v1/runs/{run_id}/approvals/{call_id}", tags=["runs"], dependencies=auth)
    async def decide_approval(
        run_id: str, call_id: str, body: Decision, store: StoreDep
    ) -> EventOut:
        await store.get_run(run_id)
        state = fold(await store.load_events(run_id))
        pending = [c.id for c in state.calls if c.approval == "requested"]
        if call_id not in pending:
            raise Problem(
                409,
                "no-pending-approval",
                "No pending approval",
                f"run {run_id} has no pending approval for call {call_id!r} "
                f"(pending: {', '.join(pending) or 'none'})",
            )
        if body.approve:
            granted = {"call_id": call_id, **({"reason": body.reason} if body.reason else {})}
            event = await store.signal(run_id, EventType.APPROVAL_GRANTED, granted)
        else:
            event = await store.signal(
                run_id, EventType.APPROVAL_DENIED, {"call_id": call_id, "reason": body.reason}
            )
        _wake(app)
        return EventOut(run_id=run_id, **event.to_dict())

    @app.post("/v1/runs/{run_id}/fork", tags=["runs"], status_code=201, dependencies=auth)
    async def fork_run(run_id: str, body: ForkCreate, store: StoreDep) -> RunOut:
        new_id = await store.fork(run_id, body.seq, agent_version=body.agent_version)
        _wake(app)
        return _run_out(await store.get_run(new_id))

    @app.get("/v1/approvals", tags=["runs"], dependencies=auth)
    async def pending_approvals(store: StoreDep) -> list[dict[str, Any]]:
        out = []
        for row in await store.list_runs(status="waiting", limit=500):
            state = fold(await store.load_events(row.id))
            for call in state.calls:
                if call.approval == "requested":
                    out.append(
                        {
                            "run_id": row.id,
                            "agent": row.agent_name,
                            "call_id": call.id,
                            "name": call.name,
                            "arguments": call.arguments,
                        }
                    )
        return out

    @app.get("/v1/workers", tags=["health"], dependencies=auth)
    async def list_workers(store: StoreDep) -> list[dict[str, Any]]:
        return await store.list_workers()

    # ------------------------------------------------------------ events

    @app.get("/v1/runs/{run_id}/events", tags=["events"], dependencies=auth)
    async def list_events(
        run_id: str,
        store: StoreDep,
        after: Annotated[int, Query(ge=0, le=INT32)] = 0,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    ) -> list[EventOut]:
        await store.get_run(run_id)
        return [
            EventOut(run_id=run_id, **e.to_dict())
            for e in await store.load_events(run_id, after=after, limit=limit)
        ]

    @app.get(
        "/v1/runs/{run_id}/events/stream",
        tags=["events"],
        dependencies=auth,
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def stream_events(
        run_id: str,
        request: Request,
        store: StoreDep,
        after: Annotated[int | None, Query(ge=0, le=INT32)] = None,
        last_event_id: Annotated[str | None, Header()] = None,
    ) -> StreamingResponse:
        """Server-Sent Events: durable events (with `id: seq`) replayed after `Last-Event-ID`
        (or `?after=`) and then followed live; token deltas live only; ends with the run."""
        await store.get_run(run_id)
        start = after or 0
        seen = (last_event_id or "").strip()
        if seen.isascii() and seen.isdigit():  # not int("²"); seq is an int32 column
            start = max(start, min(int(seen), INT32))
        feed: EventFeed = request.app.state.feed
        return StreamingResponse(
            _follow(store, feed, broker, run_id, start, request.is_disconnected, config.keepalive),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    add_secret_routes(app, auth)
    add_verb_routes(app, auth, lambda: _wake(app))
    add_webhook_routes(app, auth, _webhook_url)
    add_file_routes(app, auth)
    from everruns.api.schedules import add_schedule_routes

    add_schedule_routes(app, auth, _checked)
    from everruns.api.memory import add_memory_routes

    add_memory_routes(app, auth)
    mount_ui(app)
    idempotency.document(app)  # the Idempotency-Key header on every state change
    return app


async def _follow(
    store: Store,
    feed: EventFeed,
    broker: Broker,
    run_id: str,
    after: int,
    disconnected: Callable[[], Awaitable[bool]],
    keepalive: float,
) -> AsyncIterator[bytes]:
    last = after
    queue = broker.subscribe(run_id)
    wake = feed.waiter(run_id)
    idle = 0.0
    try:
        yield b": connected\n\n"
        upto: int | None = None  # the durable event the live ones queued so far lead up to
        while True:
            wake.clear()
            for event in await store.load_events(run_id, after=last):
                if upto is not None and event.seq > upto:
                    break  # deltas queued after `upto` belong after it: forward them first
                yield _sse({"run_id": run_id, **event.to_dict()})
                last = event.seq
                if event.type in TERMINAL_EVENTS:
                    return
            upto = None
            row = await store.get_run(run_id)
            if row.status in TERMINAL_STATUSES and row.last_seq <= last and queue.empty():
                return
            # Sleep until a durable event is signalled, forwarding live deltas meanwhile.
            deadline = feed.wait_cap
            while True:
                getter = asyncio.ensure_future(queue.get())
                waiter = asyncio.ensure_future(wake.wait())
                done, pending = await asyncio.wait(
                    {getter, waiter}, timeout=deadline, return_when=asyncio.FIRST_COMPLETED
                )
                for task in pending:
                    task.cancel()
                if getter in done:
                    item = getter.result()
                    if item.get("ephemeral"):
                        yield _sse(item, with_id=False)
                        continue
                    upto = item.get("seq")
                    break  # a durable event: read the journal up to it
                if waiter in done:
                    if not queue.empty():
                        continue  # live events published before the wake lead
                    break
                idle += deadline
                if idle >= keepalive:
                    idle = 0.0
                    if await disconnected():
                        return
                    yield b": keep-alive\n\n"
                break
    finally:
        broker.unsubscribe(queue, run_id)
        feed.drop(run_id, wake)


async def _encrypt_secret(store: Store, name: str, value: str, allow_urls: list[str]) -> None:
    try:
        await store.put_secret(name, encrypt(value), allow_urls)
    except SecretsUnavailable as exc:
        raise Problem(503, "secrets-unavailable", "Secrets unavailable", str(exc)) from None


def add_secret_routes(app: FastAPI, auth: list[Any]) -> None:
    """Provider keys stored encrypted; the API never returns a value."""

    @app.put("/v1/secrets/{name}", tags=["secrets"], status_code=204, dependencies=auth)
    async def put_secret(
        name: Annotated[str, Path(pattern=SECRET_NAME)],
        body: SecretPut,
        request: Request,
    ) -> None:
        """Store a secret for `model.credential: NAME`, bound to the URL patterns in
        `allow_urls` (it is never sent anywhere else)."""
        await _encrypt_secret(request.app.state.store, name, body.value, body.allow_urls)

    @app.get("/v1/secrets", tags=["secrets"], dependencies=auth)
    async def list_secrets(request: Request) -> list[str]:
        return await request.app.state.store.list_secrets()


def _spec_problem(exc: ToolSpecError) -> Problem:
    """A spec the policy or the tool registry refused: 422 naming the field."""
    return Problem(
        422,
        "invalid-spec",
        "Invalid agent spec",
        str(exc),
        errors=[{"field": exc.field, "message": exc.message}],
    )
