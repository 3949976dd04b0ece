"""The API key one model call carries, decided just before the request.

Which key may go where is the operator's decision (see everruns.credentials); this
module only reads it: from the worker's environment (held outside os.environ, see
hardening) or from a stored secret whose URL binding allows the model's endpoint.
"""

from __future__ import annotations

from typing import Any

from everruns.credentials import CredentialError, models_of, plan_key, url_allowed
from everruns.engine.hardening import getenv
from everruns.providers import ProviderError
from everruns.secretbox import SecretsUnavailable, decrypt
from everruns.settings import Settings
from everruns.spec import AgentSpec, ModelSpec
from everruns.store import Store


async def bindings(
    store: Store, settings: Settings, spec: AgentSpec | None = None
) -> dict[str, list[str]]:
    """Stored secrets' URL bindings; skips the query when `spec` names no credential
    that settings do not bind (most runs)."""
    if spec is not None and not any(
        m.credential is not None and m.credential not in settings.credentials
        for _, m in models_of(spec)
    ):
        return {}
    return await store.secret_bindings()


async def stored_key(store: Store, settings: Settings, origin: str, model: ModelSpec) -> str | None:
    """The key this model's call carries, decided by the operator's bindings just
    before the request (see everruns.credentials); `not-needed` when none may go."""
    if model.provider == "scripted":
        return None
    stored = model.credential is not None and model.credential not in settings.credentials
    bound = await bindings(store, settings) if stored else {}
    try:
        plan = plan_key(model, origin, settings, bound)
    except CredentialError as exc:
        raise ProviderError(str(exc), error_class="auth", retryable=False) from None
    if plan.source == "none":
        return "not-needed"
    assert plan.name is not None
    if plan.source in ("env", "default"):
        value = getenv(plan.name)  # the worker holds keys outside os.environ (hardening)
        if value:
            return value
    if plan.source == "env":
        raise _missing(f"environment variable {plan.name} (the key for {model.label})")
    ciphertext = await store.get_secret(plan.name)
    if plan.source == "default":
        bound = await bindings(store, settings)
    if plan.source == "default" and (
        ciphertext is None or not _stored_default_allowed(plan, bound)
    ):
        raise _missing(f"environment variable {plan.name} (the API key for {model.label})")
    if ciphertext is None:
        raise _missing(f"stored secret {plan.name!r}")
    try:
        return decrypt(ciphertext)
    except SecretsUnavailable as exc:
        raise ProviderError(str(exc), error_class="auth", retryable=False) from None


def _stored_default_allowed(plan: Any, bound: dict[str, list[str]]) -> bool:
    """A stored secret named like the provider's default variable stands in for it only
    at a URL its own binding allows."""
    return plan.url is not None and url_allowed(plan.url, bound.get(plan.name, []))


def _missing(what: str) -> ProviderError:
    return ProviderError(f"{what} is not set", error_class="auth", retryable=False)
