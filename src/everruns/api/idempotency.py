"""`Idempotency-Key` for every state-changing request (POST, PUT, PATCH, DELETE).

One ASGI middleware, so every route gets it, including routes added later. The first
request with a key claims it in the database (`store/idempotency.py`: insert-first, so two
concurrent duplicates on two API processes give one effect); its response is stored and a
repeat with the same method, path and body gets that response back (with
`Idempotent-Replayed: true`); the same key with a different request is a 422 problem. A
duplicate that arrives while the first is still running waits for its response (up to
`WAIT` seconds, then 409). Responses a retry may change are not kept: 5xx, and 401/403/429
(the key is released, so the retry executes). Keys are scoped by the caller's credential.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from everruns.api import problems
from everruns.store.idempotency import Busy, Claimed, Idempotency, Mismatch, Replay, fingerprint

HEADER = b"idempotency-key"
METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
MAX_KEY = 255
WAIT = 30.0
NOT_KEPT = frozenset({401, 403, 429})


def _problem(scope: Scope, status: int, kind: str, title: str, detail: str) -> ASGIApp:
    return problems.problem_response(status, kind, title, detail, scope.get("path"))


class IdempotencyKeys:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in METHODS:
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        raw = headers.get(HEADER)
        if raw is None:
            await self.app(scope, receive, send)
            return
        key = raw.decode("latin-1").strip()
        if not key or len(key) > MAX_KEY or not key.isprintable() or not key.isascii():
            detail = f"Idempotency-Key must be 1 to {MAX_KEY} printable ASCII characters"
            refusal = _problem(scope, 422, "invalid-idempotency-key", "Invalid request", detail)
            await refusal(scope, receive, send)
            return
        try:
            body = await _read_body(receive)
        except problems.Problem as exc:  # the body limit (api/app.py BodyLimit)
            await _problem(scope, exc.status, exc.kind, exc.title, exc.detail)(scope, receive, send)
            return
        credential = headers.get(b"authorization", b"")
        owner = hashlib.sha256(credential).hexdigest()
        store = scope["app"].state.store
        keys: Idempotency = store.idempotency
        print_ = fingerprint(scope["method"], scope["path"], scope.get("query_string", b""), body)
        deadline = time.monotonic() + WAIT
        while True:
            begun = await keys.begin(owner, key, print_)
            if not isinstance(begun, Busy) or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.1)
        if isinstance(begun, Mismatch):
            detail = (
                f"Idempotency-Key {key!r} was already used for a different request "
                "(method, path or body); use a new key for a new request"
            )
            await _problem(scope, 422, "idempotency-key-reused", "Invalid request", detail)(
                scope, receive, send
            )
            return
        if isinstance(begun, Busy):
            detail = f"the first request with Idempotency-Key {key!r} is still being processed"
            await _problem(scope, 409, "idempotency-in-progress", "Conflict", detail)(
                scope, receive, send
            )
            return
        if isinstance(begun, Replay):
            await _replay(begun, send)
            return
        assert isinstance(begun, Claimed)
        await self._first(scope, body, send, owner, key, keys)

    async def _first(
        self, scope: Scope, body: bytes, send: Send, owner: str, key: str, keys: Idempotency
    ) -> None:
        """Execute the request that claimed the key. Its response is stored before the last
        byte of it is sent, so a client that has the whole response can count on the retry
        finding it, even if this process dies right after."""
        status = 500
        content_type = ""
        chunks: list[bytes] = []
        sent = False
        kept = False

        async def replay_body() -> Message:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def capture(message: Message) -> None:
            nonlocal status, content_type, kept
            if message["type"] == "http.response.start":
                status = int(message["status"])
                for name, value in message.get("headers") or []:
                    if name.lower() == b"content-type":
                        content_type = value.decode("latin-1")
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body") and status < 500 and status not in NOT_KEPT:
                    text = b"".join(chunks).decode("utf-8", "replace")
                    await keys.finish(owner, key, status, text, content_type)
                    kept = True
            await send(message)

        try:
            await self.app(scope, replay_body, capture)
        except BaseException:
            if not kept:
                await asyncio.shield(keys.abandon(owner, key))
            raise
        if not kept:
            await keys.abandon(owner, key)


async def _read_body(receive: Receive) -> bytes:
    parts = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        parts.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return b"".join(parts)


async def _replay(replay: Replay, send: Send) -> None:
    body = replay.body.encode()
    headers = [
        (b"content-type", (replay.content_type or "application/json").encode("latin-1")),
        (b"content-length", str(len(body)).encode()),
        (b"idempotent-replayed", b"true"),
    ]
    await send({"type": "http.response.start", "status": replay.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


PARAMETER = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_KEY, "pattern": "^[!-~]+$"},
    "description": "Retry-safe: a repeat with the same key and body returns the first "
    "response (kept at least 24 h); the same key with another body is a 422.",
}


def document(app: FastAPI) -> None:
    """Add the header to every state-changing operation of the OpenAPI document, so routes
    added anywhere get it (the middleware applies to them all)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        for operations in schema.get("paths", {}).values():
            for method, operation in operations.items():
                if method.upper() in METHODS:
                    params = operation.setdefault("parameters", [])
                    if not any(p.get("name") == PARAMETER["name"] for p in params):
                        params.append(dict(PARAMETER))
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
