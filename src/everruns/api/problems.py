"""Errors as RFC 9457 problem details, with a stable `type` and a human `detail`."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from everruns.spec import SpecError
from everruns.store import RunNotFound, StoreError
from everruns.store.database import DatabaseUnavailable

BASE = "https://everruns.dev/problems/"


class Problem(Exception):
    def __init__(self, status: int, kind: str, title: str, detail: str, **extra: Any):
        self.status = status
        self.kind = kind
        self.title = title
        self.detail = detail
        self.extra = extra


def problem_response(
    status: int, kind: str, title: str, detail: str, instance: str | None = None, **extra: Any
) -> JSONResponse:
    body = {"type": BASE + kind, "title": title, "status": status, "detail": detail, **extra}
    if instance:
        body["instance"] = instance
    return JSONResponse(body, status_code=status, media_type="application/problem+json")


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts)


def _allowed_methods(request: Request) -> str:
    """Every method some route serves at this path (Starlette names only the first
    route's, and GET and POST of one path are two routes)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return ", ".join(sorted(methods))


def install(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return problem_response(
            exc.status, exc.kind, exc.title, exc.detail, request.url.path, **exc.extra
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"field": _field(tuple(e.get("loc", ()))), "message": str(e.get("msg", ""))}
            for e in exc.errors()
        ]
        detail = "; ".join(f"{e['field'] or '(body)'}: {e['message']}" for e in errors)
        return problem_response(
            422, "validation-error", "Invalid request", detail, request.url.path, errors=errors
        )

    @app.exception_handler(SpecError)
    async def _spec(request: Request, exc: SpecError) -> JSONResponse:
        errors = [{"field": f, "message": m} for f, m in exc.problems]
        return problem_response(
            422, "invalid-spec", "Invalid agent spec", str(exc), request.url.path, errors=errors
        )

    @app.exception_handler(RunNotFound)
    async def _not_found(request: Request, exc: RunNotFound) -> JSONResponse:
        return problem_response(404, "run-not-found", "Run not found", str(exc), request.url.path)

    @app.exception_handler(DatabaseUnavailable)
    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    async def _database(request: Request, exc: Exception) -> JSONResponse:
        # The database went away under a request: the server is not broken, only waiting.
        reason = " ".join(str(getattr(exc, "orig", None) or exc).split())
        return problem_response(
            503, "database-unavailable", "Database unavailable", reason, request.url.path
        )

    @app.exception_handler(StoreError)
    async def _store(request: Request, exc: StoreError) -> JSONResponse:
        return problem_response(409, "conflict", "Conflict", str(exc), request.url.path)

    @app.exception_handler(DataError)
    async def _data(request: Request, exc: DataError) -> JSONResponse:
        # The database refused a value taken from the request (PostgreSQL: a NUL
        # character in text): the request is invalid, the server is not broken.
        reason = str(exc.orig or exc).splitlines()[0]
        return problem_response(
            422,
            "validation-error",
            "Invalid request",
            f"a value was refused by the database: {reason}",
            request.url.path,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {
            401: "unauthorized",
            403: "forbidden",
            404: "not-found",
            405: "method-not-allowed",
            413: "too-large",
        }.get(exc.status_code, "http-error")
        response = problem_response(
            exc.status_code, kind, str(exc.detail), str(exc.detail), request.url.path
        )
        response.headers.update(exc.headers or {})
        if exc.status_code == 405:
            response.headers["Allow"] = _allowed_methods(request)
        return response
