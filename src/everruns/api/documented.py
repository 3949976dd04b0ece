"""The OpenAPI document lists every response an operation can give: besides its success,
the RFC 9457 problems (`application/problem+json`) that the handlers, the validation, the
body limit, the origin guard, auth and a lost database produce (schemathesis checks the
server against this document, tests/api/test_openapi.py)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "type": "object",
    "description": "RFC 9457 problem details.",
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
    "required": ["type", "title", "status", "detail"],
}
WHY = {
    "400": "The body is not JSON.",
    "401": "An API token is missing, invalid or revoked (auth on).",
    "403": "Refused by the origin guard (a Host or cross-site Origin this server does not serve).",
    "404": "No such run, agent, schedule or note.",
    "405": "Method not allowed (the `Allow` header lists those that are).",
    "409": "The resource is not in a state that allows this.",
    "413": "The body is larger than the server accepts.",
    "422": "Invalid request or spec; `errors` names each field.",
    "503": "The database (or the secret store) is unavailable.",
}
UNAUTHENTICATED = {"/v1/health", "/v1/ready"}
#: Operations whose body names a stored agent (404 when there is none).
NAMES_IN_BODY = {("/v1/runs", "post"), ("/v1/schedules", "post")}


def _problem(status: str) -> dict[str, Any]:
    return {
        "description": WHY[status],
        "content": {
            "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
        },
    }


def _statuses(path: str, method: str, operation: dict[str, Any]) -> list[str]:
    statuses = ["403", "503"]
    if path not in UNAUTHENTICATED:
        statuses.append("401")
    if operation.get("parameters") or "requestBody" in operation:
        statuses.append("422")
    if "requestBody" in operation:
        statuses += ["400", "413"]
    if "{" in path or (path, method) in NAMES_IN_BODY:
        statuses += ["404", "409"]
    return statuses


def document(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, with every operation's problem responses."""
    doc = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    doc.setdefault("components", {}).setdefault("schemas", {})["Problem"] = PROBLEM_SCHEMA
    for schemas in ("HTTPValidationError", "ValidationError"):
        doc["components"]["schemas"].pop(schemas, None)
    for path, operations in doc.get("paths", {}).items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            for status in _statuses(path, method, operation):
                responses[status] = _problem(status)
    return doc


def install(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
