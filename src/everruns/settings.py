"""Deployment settings shared by all workers (not part of an agent spec).

Loaded from the YAML file named by `EVERRUNS_SETTINGS`, else `.everruns/settings.yaml`
when it exists:

```yaml
rate_limits:              # fleet-wide, enforced through the database
  - match: openai         # a provider, a provider:model label, or an api_key_env name
    rpm: 500
    tpm: 200000
prices:                   # US dollars per million tokens, overriding the built-in table
  "openai:gpt-4.1": {input: 2.0, output: 8.0}
sandbox: bwrap            # or `none`: shell and stdio MCP servers run unconfined
sandbox_read_only:        # more paths tools may read (e.g. a runtime installed in /srv)
  - /srv/node
credentials:              # `model.credential: NAME` -> an environment variable + allowed URLs
  openai-prod: {env: OPENAI_API_KEY, allow_urls: ["https://api.openai.com/*"]}
api_specs:                # what a spec submitted through the HTTP API may use
  allow_tools: [python]   # any of shell, python, mcp_stdio (default: none of them)
  python_modules: [mytools]  # modules (and submodules) API specs may import tools from
allow_private_networks: false  # web_fetch/http SSRF guard; a spec can only narrow it
```

See docs/security.md for what each setting protects against.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from everruns.spec import ModelSpec, Pricing, SpecError

DEFAULT_PATH = Path(".everruns") / "settings.yaml"
RESERVED_ENV_PREFIX = "EVERRUNS_"  # the deployment's own variables are never credentials
ToolKind = Literal["shell", "python", "mcp_stdio"]


class RateLimit(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    match: str
    rpm: float | None = Field(default=None, gt=0)
    tpm: float | None = Field(default=None, gt=0)

    def applies_to(self, model: ModelSpec) -> bool:
        return self.match in (model.provider, model.label, model.api_key_env, model.credential)

    @property
    def key(self) -> str:
        return f"rate:{self.match}"


def check_env_name(name: str) -> str:
    """An environment variable that may hold a credential (never an `EVERRUNS_*` one)."""
    if name.upper().startswith(RESERVED_ENV_PREFIX):
        raise ValueError(
            f"{name} is one of the deployment's own variables ({RESERVED_ENV_PREFIX}*) "
            "and can never be used as a credential"
        )
    return name


def check_url_pattern(pattern: str) -> str:
    if not pattern.startswith(("http://", "https://")):
        raise ValueError(f"{pattern!r} is not a URL pattern (e.g. https://api.openai.com/*)")
    return pattern


class CredentialBinding(BaseModel):
    """A credential provided by the worker's environment, and where it may be sent."""

    model_config = ConfigDict(extra="forbid")
    env: str = Field(min_length=1)
    allow_urls: list[str] = Field(min_length=1)

    @field_validator("env")
    @classmethod
    def _env(cls, value: str) -> str:
        return check_env_name(value)

    @field_validator("allow_urls")
    @classmethod
    def _urls(cls, value: list[str]) -> list[str]:
        return [check_url_pattern(p) for p in value]


class ApiSpecPolicy(BaseModel):
    """What a spec submitted through the HTTP API may use (local CLI specs may use all)."""

    model_config = ConfigDict(extra="forbid")
    allow_tools: list[ToolKind] = Field(default_factory=list)
    python_modules: list[str] = Field(default_factory=list)


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rate_limits: list[RateLimit] = Field(default_factory=list)
    prices: dict[str, Pricing] = Field(default_factory=dict)
    # web_fetch/http may reach private, loopback and link-local addresses (SSRF guard off).
    allow_private_networks: bool = False
    # The tool sandbox (everruns.tools.sandbox) for `shell` and stdio MCP servers:
    # `bwrap` (the default; tools refuse to start where it cannot run) or `none`.
    sandbox: Literal["bwrap", "none"] = "bwrap"
    sandbox_read_only: list[str] = Field(default_factory=list)
    credentials: dict[str, CredentialBinding] = Field(default_factory=dict)
    api_specs: ApiSpecPolicy = Field(default_factory=ApiSpecPolicy)

    def rate_limits_for(self, model: ModelSpec) -> list[RateLimit]:
        return [r for r in self.rate_limits if r.applies_to(model)]


def load_settings(path: str | Path | None = None) -> Settings:
    explicit = path or os.environ.get("EVERRUNS_SETTINGS")
    file = Path(explicit) if explicit else DEFAULT_PATH
    if not file.exists():
        if explicit:
            raise SpecError(str(file), [("", "settings file not found")])
        return Settings()
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        return Settings.model_validate(data)
    except yaml.YAMLError as exc:
        raise SpecError(str(file), [("", f"invalid YAML: {exc}")]) from None
    except ValidationError as exc:
        problems = [(".".join(str(p) for p in e["loc"]), e["msg"]) for e in exc.errors()]
        raise SpecError(str(file), problems) from None
