"""Which key a model call may carry, and to which URL (pure: no I/O).

A spec names a credential (`model.credential`); the operator binds each name to a
source (an environment variable in settings, or a stored secret) and to the URL
patterns it may be sent to. A spec can therefore never pick which secret it gets,
nor where it goes. Raw `api_key_env` is accepted only in specs from local files
(origin "local"), never for `EVERRUNS_*` variables, and still obeys the URL binding
of any credential that names the same variable. Without either field, the provider's
well-known variable (OPENAI_API_KEY, ANTHROPIC_API_KEY) is used only at the
provider's default URL.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from everruns.settings import RESERVED_ENV_PREFIX, Settings
from everruns.spec import AgentSpec, ModelSpec

Origin = Literal["local", "api"]
ORIGINS: tuple[str, ...] = ("local", "api")
DEFAULT_URLS = {"openai": "https://api.openai.com/v1", "anthropic": "https://api.anthropic.com"}
DEFAULT_ENVS = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}
# The SDKs read these when no base_url is given: the operator's environment, honoured.
BASE_URL_ENVS = {"openai": "OPENAI_BASE_URL", "anthropic": "ANTHROPIC_BASE_URL"}


class CredentialError(ValueError):
    """A model's key cannot be sent where the spec asks; `field` is its path in the spec."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class KeyPlan:
    """Where the key of one model comes from: nowhere, an environment variable, a stored
    secret, or the provider's default variable (environment, else a stored secret)."""

    source: Literal["none", "env", "secret", "default"]
    name: str | None = None
    url: str | None = None


def target_url(model: ModelSpec, environ: Mapping[str, str] | None = None) -> str | None:
    """The base URL the provider's requests go to."""
    if model.provider == "scripted":
        return None
    if model.base_url:
        return model.base_url
    env = os.environ if environ is None else environ
    return env.get(BASE_URL_ENVS.get(model.provider, "")) or DEFAULT_URLS.get(model.provider)


def canonical_url(url: str) -> str | None:
    """scheme://host[:port]/path in lower case (host), or None for anything ambiguous
    (user info, backslashes, whitespace, not http(s)) that could fool a pattern."""
    if any(c in url for c in "\\@ \t\r\n") or any(ord(c) < 32 for c in url):
        return None
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None else f"{host}:{port}"
    path = parts.path or "/"
    if not path.endswith("/"):
        path += "/"
    return f"{parts.scheme.lower()}://{netloc}{path}"


def url_allowed(url: str, patterns: list[str]) -> bool:
    """True if the URL matches one of the operator's patterns (`*` matches anything)."""
    canonical = canonical_url(url)
    if canonical is None:
        return False
    return any(
        fnmatch.fnmatchcase(canonical, p) or fnmatch.fnmatchcase(canonical.rstrip("/"), p)
        for p in patterns
    )


def _is_default_url(model: ModelSpec, url: str | None) -> bool:
    default = DEFAULT_URLS.get(model.provider)
    return url is not None and default is not None and canonical_url(url) == canonical_url(default)


def _check_env_bindings(env: str, url: str, settings: Settings, field: str, what: str) -> None:
    """A variable the operator bound to URLs keeps its binding, whoever names it."""
    bound = {name: b for name, b in settings.credentials.items() if b.env == env}
    if bound and not any(url_allowed(url, b.allow_urls) for b in bound.values()):
        names = ", ".join(sorted(bound))
        raise CredentialError(
            field,
            f"{what} {env} is bound (credential {names}) to other URLs; "
            f"it may not be sent to {url}",
        )


def plan_key(
    model: ModelSpec,
    origin: str,
    settings: Settings,
    stored: Mapping[str, list[str]],
    field: str = "model",
    environ: Mapping[str, str] | None = None,
) -> KeyPlan:
    """Decide where the key of `model` comes from, or raise CredentialError.

    `stored`: the names of stored secrets and the URL patterns bound to each.
    """
    url = target_url(model, environ)
    if model.provider == "scripted" or url is None:
        return KeyPlan("none")
    if model.credential is not None:
        return _plan_credential(model.credential, url, settings, stored, field)
    if model.api_key_env is not None:
        env = model.api_key_env
        if origin != "local":
            raise CredentialError(
                f"{field}.api_key_env",
                "accepted only in specs loaded from local files by the CLI; "
                "name a credential the operator bound instead (`credential: NAME`)",
            )
        if env.upper().startswith(RESERVED_ENV_PREFIX):
            raise CredentialError(
                f"{field}.api_key_env",
                f"{env} is one of the deployment's own variables and can never be a credential",
            )
        _check_env_bindings(env, url, settings, f"{field}.api_key_env", "variable")
        return KeyPlan("env", env, url)
    default_env = DEFAULT_ENVS.get(model.provider)
    if default_env is None or (model.base_url is not None and not _is_default_url(model, url)):
        return KeyPlan("none", url=url)  # a custom base_url never receives the default key
    _check_env_bindings(default_env, url, settings, field, "the default variable")
    return KeyPlan("default", default_env, url)


def _plan_credential(
    name: str, url: str, settings: Settings, stored: Mapping[str, list[str]], field: str
) -> KeyPlan:
    where = f"{field}.credential"
    binding = settings.credentials.get(name)
    if binding is not None:
        patterns, plan = binding.allow_urls, KeyPlan("env", binding.env, url)
    elif name in stored:
        patterns, plan = stored[name], KeyPlan("secret", name, url)
    else:
        raise CredentialError(
            where,
            f"credential {name!r} is not bound: bind it in settings (`credentials:`) "
            f"or with `everruns secret set {name} --value ... --allow-url ...`",
        )
    if not url_allowed(url, patterns):
        allowed = ", ".join(patterns) or "no URL"
        raise CredentialError(
            where, f"credential {name!r} may not be sent to {url} (allowed: {allowed})"
        )
    return plan


def models_of(spec: AgentSpec) -> list[tuple[str, ModelSpec]]:
    """Every model a spec may call, with its field path: the model, its fallbacks
    (recursively) and the summarizer."""
    found: list[tuple[str, ModelSpec]] = []

    def walk(model: ModelSpec, field: str) -> None:
        found.append((field, model))
        for index, fallback in enumerate(model.fallbacks):
            walk(fallback, f"{field}.fallbacks[{index}]")

    walk(spec.model, "model")
    if spec.context.summary_model is not None:
        walk(spec.context.summary_model, "context.summary_model")
    return found


def check_credentials(
    spec: AgentSpec, origin: str, settings: Settings, stored: Mapping[str, list[str]]
) -> None:
    """Raise CredentialError for the first model whose key would go somewhere unbound."""
    for field, model in models_of(spec):
        plan_key(model, origin, settings, stored, field)
