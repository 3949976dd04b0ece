"""The webhook delivery loop: outbox rows become deliveries, deliveries become POSTs.

Runs in every worker (and so in an API server with its embedded worker). Several loops may
run against one database: `take_due` locks each delivery for one attempt, and delivery ids
are stable, so a receiver deduplicates by the `Everruns-Delivery` header. Delivery is at
least once: a process killed after the POST but before recording it sends it again.

Each POST carries `Everruns-Signature: t=<unix time>,v1=<hex>` — HMAC-SHA256 keyed by the
stored secret `secret_ref` over `"<t>.<body>"` — plus `Everruns-Delivery` and
`Everruns-Event`. The URL goes through the `http` tool's SSRF guard (private addresses
only with `allow_private_networks`), redirects are not followed, and any 2xx is success.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from typing import Any

from everruns.core.backoff import backoff_delay
from everruns.errors import EverrunsError
from everruns.secretbox import decrypt
from everruns.settings import Settings
from everruns.spec import RetryPolicy
from everruns.store import Store
from everruns.tools.web import http_request

log = logging.getLogger("everruns.webhooks")
LOCK = 30.0  # one attempt's lock on a delivery (longer than its timeout)
PARALLEL = 8


def signature(secret: str, timestamp: int, body: str) -> str:
    """The `Everruns-Signature` value a receiver recomputes to verify a delivery."""
    mac = hmac.new(secret.encode(), f"{timestamp}.{body}".encode(), hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


class Deliverer:
    def __init__(self, store: Store, settings: Settings):
        self.store = store
        self.settings = settings
        self.policy = settings.webhooks
        self.retry = RetryPolicy(
            initial_backoff=self.policy.retry_initial,
            max_backoff=self.policy.retry_max,
            multiplier=2.0,
        )

    async def run(self) -> None:
        """Until cancelled: fan out the outbox, deliver what is due."""
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("webhook delivery pass failed; retrying", exc_info=True)
            await asyncio.sleep(self.policy.interval)

    async def tick(self) -> int:
        """One pass; how many deliveries were attempted."""
        hooks = self.store.webhooks
        while await hooks.fan_out() >= 200:
            pass
        due = await hooks.take_due(PARALLEL * 4, LOCK)
        limit = asyncio.Semaphore(PARALLEL)

        async def one(delivery: dict[str, Any]) -> None:
            async with limit:
                await self.attempt(delivery)

        await asyncio.gather(*(one(d) for d in due))
        return len(due)

    async def attempt(self, delivery: dict[str, Any]) -> None:
        status: int | None = None
        error: str | None = None
        try:
            status = await self._post(delivery)
            if not 200 <= status < 300:
                error = f"the receiver answered {status}"
        except (EverrunsError, OSError) as exc:
            error = str(exc) or type(exc).__name__
        except Exception as exc:  # a bug must not stop the loop for every delivery
            error = f"{type(exc).__name__}: {exc}"
        ok = error is None
        attempts = int(delivery["attempts"]) + 1
        retry_at = None
        if not ok:
            retry_at = time.time() + backoff_delay(self.retry, attempts)
            if retry_at - float(delivery["created_at"]) > self.policy.give_up_after:
                retry_at = None
            log.info("webhook %s attempt %d failed: %s", delivery["id"], attempts, error)
        await self.store.webhooks.record(
            delivery["id"], ok=ok, status=status, error=error, next_attempt_at=retry_at
        )

    async def _post(self, delivery: dict[str, Any]) -> int:
        body = delivery["payload"]
        headers = {
            "Content-Type": "application/json",
            "Everruns-Delivery": delivery["id"],
            "Everruns-Event": delivery["event_type"],
        }
        if delivery["secret_ref"]:
            headers["Everruns-Signature"] = signature(
                await self._secret(delivery["secret_ref"]), int(time.time()), body
            )
        reply = await http_request(
            "POST",
            delivery["url"],
            headers=headers,
            body=body,
            allow_private=self.settings.allow_private_networks,
            timeout=self.policy.timeout,
            max_bytes=4096,
            follow_redirects=False,
        )
        return int(reply["status"])

    async def _secret(self, name: str) -> str:
        ciphertext = await self.store.get_secret(name)
        if ciphertext is None:
            raise EverrunsError(f"the webhook's secret {name!r} is not stored (everruns secrets)")
        return decrypt(ciphertext)
