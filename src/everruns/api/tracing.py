"""Request spans of the API server, linked to the runs they touch (tracing on only).

A request on `/v1/runs/{id}/...` becomes a SERVER span (continuing the caller's W3C
`traceparent` when sent) with a link to that run's `invoke_agent` span, so a trace
backend leads from "who cancelled this run" to the run and back.
"""

from __future__ import annotations

import random
import re
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from everruns.engine import tracing

_RUN_PATH = re.compile(r"^/v1/runs/([^/]+)(/.*)?$")


class TraceRequests:
    def __init__(self, app: ASGIApp, sink: tracing.Sink):
        self.app = app
        self.sink = sink

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = _RUN_PATH.match(scope.get("path", "")) if scope["type"] == "http" else None
        if match is None:
            await self.app(scope, receive, send)
            return
        run_id, rest = match.group(1), match.group(2) or ""
        started = time.time()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self._emit(scope, run_id, rest, started, status)

    def _emit(self, scope: Scope, run_id: str, rest: str, started: float, status: int) -> None:
        headers = dict(scope.get("headers") or [])
        parent = tracing.parse_traceparent(headers.get(b"traceparent", b"").decode("latin-1"))
        trace = parent[0] if parent else random.getrandbits(128) or 1
        method = scope.get("method", "GET")
        route = "/v1/runs/{run_id}" + re.sub(r"/[^/]*\d[^/]*", "/{id}", rest)
        self.sink.emit(
            tracing.SpanRecord(
                name=f"{method} {route}",
                trace_id=trace,
                span_id=random.getrandbits(64) or 1,
                parent_id=parent[1] if parent else None,
                start=started,
                end=time.time(),
                attributes={
                    "http.request.method": method,
                    "url.path": scope.get("path", ""),
                    "http.route": route,
                    "http.response.status_code": status,
                    "everruns.run.id": run_id,
                },
                error=f"HTTP {status}" if status >= 500 else None,
                links=[(tracing.trace_id(run_id), tracing.root_span_id(run_id))],
                kind="server",
            )
        )
