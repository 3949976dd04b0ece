"""One rooted exception hierarchy: every error everruns raises on purpose is an
`EverrunsError`, so a caller can catch them all and a reader can see them all here.

    EverrunsError
    ├── SpecError            a spec that cannot run (names source, field and problem)
    ├── StoreError           a store operation that cannot be done
    │   ├── RunNotFound
    │   ├── Fenced           the caller's epoch is stale (another worker holds the run)
    │   └── Moved            a conditional append found events the caller has not seen
    ├── ProviderError        a failed LLM call, classified for retry decisions
    ├── ToolError            a tool's failure, reported to the model (not a crash)
    │   └── TransientToolError  a failure worth retrying (5xx, connection), if the effect allows
    └── RetryLater           raised by a tool: this attempt did not take effect, retry later

Other modules subclass these (tools: `SSRFError`, `PathEscape`, `MCPConnectionError`;
client: `ApiError`; secrets: `SecretsUnavailable`), and the classes stay importable
from where they were defined before (`everruns.store`, `everruns.spec`,
`everruns.providers`, `everruns.tools`).
"""

from __future__ import annotations


class EverrunsError(Exception):
    """The root of every error everruns raises on purpose."""


class SpecError(EverrunsError):
    """A spec that cannot run. The message names the source, the field and the problem."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        lines = [
            f"{source}: {field}: {msg}" if field else f"{source}: {msg}" for field, msg in problems
        ]
        super().__init__("\n".join(lines))


class StoreError(EverrunsError):
    """A store operation that cannot be done (a missing agent, a finished run, ...)."""


class RunNotFound(StoreError):
    def __init__(self, run_id: str):
        super().__init__(f"no run with id {run_id!r}")
        self.run_id = run_id


class Fenced(StoreError):
    """The caller's epoch is stale: another worker holds the run now."""


class Moved(StoreError):
    """A conditional append found events the caller has not seen (a signal arrived)."""


class ProviderError(EverrunsError):
    """A failed LLM call, classified so the engine can decide to retry or fail."""

    def __init__(
        self,
        message: str,
        *,
        error_class: str = "server_error",
        retryable: bool = True,
        retry_after: float | None = None,
        usage: dict[str, int] | None = None,
        status: int | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_class = error_class
        self.retryable = retryable
        self.retry_after = retry_after
        self.usage = usage or {}


class ToolError(EverrunsError):
    """Raise from a tool to report a failure to the model (not a crash)."""


class TransientToolError(ToolError):
    """A failure that may pass (a 5xx, a dropped connection): retried with back-off per the
    tool's `retry:` block, unless the tool is `at_most_once` (the attempt may have acted)."""


class RetryLater(EverrunsError):
    """Raise from a tool: this attempt did not take effect; run the call again later.

    `after` is the least wait in seconds (a `Retry-After`); None lets the tool's `retry:`
    block choose (exponential back-off). The engine journals `tool.retrying`, waits
    durably and calls the tool again with the same idempotency key — even an
    `at_most_once` tool, since the tool itself says nothing happened.
    """

    def __init__(self, after: float | None = None, reason: str = "retry later"):
        super().__init__(reason)
        self.after = None if after is None else max(0.0, float(after))
        self.reason = reason
