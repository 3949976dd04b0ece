"""Webhook routes: global subscriptions, and every delivery with its attempts."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import FastAPI, Query

from everruns.api.deps import StoreDep
from everruns.api.models import DeliveryOut, WebhookCreate, WebhookOut
from everruns.api.problems import Problem
from everruns.errors import ToolError
from everruns.settings import Settings
from everruns.tools.web import check_url

UrlCheck = Callable[[str], Awaitable[None]]


def url_checker(settings: Settings) -> UrlCheck:
    """The `http` tool's SSRF guard for webhook URLs, as a 422 problem."""

    async def check(url: str) -> None:
        try:
            await check_url(url, settings.allow_private_networks)
        except ToolError as exc:  # refused by the guard (SSRFError), or no such host
            raise Problem(
                422,
                "invalid-webhook",
                "Invalid webhook",
                f"webhook url {url!r} refused: {exc}",
                errors=[{"field": "url", "message": str(exc)}],
            ) from None

    return check


def add_webhook_routes(app: FastAPI, auth: list[Any], check: UrlCheck) -> None:
    @app.post("/v1/webhooks", tags=["webhooks"], status_code=201, dependencies=auth)
    async def create_webhook(body: WebhookCreate, store: StoreDep) -> WebhookOut:
        """A global webhook (every run's events), or one run's with `run_id`. Deliveries
        are POSTs signed with the stored secret `secret_ref` (HMAC-SHA256)."""
        await check(body.url)
        if body.run_id is not None:
            await store.get_run(body.run_id)
        hook = await store.webhooks.create(
            body.url, body.events, body.secret_ref, run_id=body.run_id
        )
        return WebhookOut(**hook)

    @app.get("/v1/webhooks", tags=["webhooks"], dependencies=auth)
    async def list_webhooks(
        store: StoreDep, run_id: Annotated[str | None, Query(max_length=40)] = None
    ) -> list[WebhookOut]:
        return [WebhookOut(**h) for h in await store.webhooks.subscriptions(run_id)]

    @app.get("/v1/webhooks/deliveries", tags=["webhooks"], dependencies=auth)
    async def list_deliveries(
        store: StoreDep,
        run_id: Annotated[str | None, Query(max_length=40)] = None,
        status: Annotated[str | None, Query(pattern="^(pending|delivered|failed)$")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    ) -> list[DeliveryOut]:
        """Deliveries, newest first, each with its attempts (`history`)."""
        rows = await store.webhooks.deliveries(run_id=run_id, status=status, limit=limit)
        return [DeliveryOut(**d) for d in rows]

    @app.delete("/v1/webhooks/{webhook_id}", tags=["webhooks"], status_code=204, dependencies=auth)
    async def delete_webhook(webhook_id: str, store: StoreDep) -> None:
        if not await store.webhooks.delete(webhook_id):
            raise Problem(
                404, "webhook-not-found", "Webhook not found", f"no webhook {webhook_id!r}"
            )
