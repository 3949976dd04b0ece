"""The one interface the run commands are written against.

`LocalBackend` (local.py) talks to the database through `everruns.store.Store`;
`RemoteBackend` (remote.py) talks to an `everruns server` through `AsyncClient`. A command
calls `open_backend(db, server, token)` and never asks which one it got.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Protocol

from everruns.cli.common import EXIT_USAGE, CliError
from everruns.cli.views import RunView
from everruns.client import MemoryItem
from everruns.spec import AgentSpec
from everruns.store import RunNotFound

#: How many candidates an ambiguous prefix lists.
SHOWN_CANDIDATES = 10


class Backend(Protocol):
    async def run_ids_starting(self, prefix: str) -> list[str]:
        """Ids of runs that start with `prefix` (a few; the exact id among them if it exists)."""
        ...

    async def start_run(
        self,
        spec: AgentSpec,
        input: str | None,
        idempotency_key: str | None = None,
        files: dict[str, bytes] | None = None,
    ) -> str:
        """Queue a run of `spec` (its workspace starting with `files`); its id. A repeat with
        the same `idempotency_key` (and the same spec and input) returns the first run's id
        instead of starting another."""
        ...

    async def files(self, run_id: str) -> list[dict[str, Any]]:
        """The run's workspace files: path, size, sha256, seq, step, call_id."""
        ...

    async def file_contents(self, run_id: str) -> dict[str, bytes]:
        """path -> content of each file of the run's workspace."""
        ...

    async def get_run(self, run_id: str) -> RunView: ...

    async def list_runs(
        self, *, status: str | None, agent: str | None, limit: int
    ) -> list[RunView]: ...

    async def events(self, run_id: str, after: int) -> list[dict[str, Any]]:
        """The journal after `after`, as `views.event_record`s."""
        ...

    def follow(self, run_id: str, after: int) -> AsyncIterator[dict[str, Any]]:
        """The journal after `after`, then each new event, until the run ends."""
        ...

    async def cancel(self, run_id: str) -> str:
        """ "cancelled", "requested" (its worker will stop it) or the status it already had."""
        ...

    async def approve(self, run_id: str, call_id: str) -> None: ...

    async def deny(self, run_id: str, call_id: str, reason: str) -> None: ...

    async def message(self, run_id: str, text: str) -> int:
        """Journal a user message; its seq."""
        ...

    async def steer(self, run_id: str, text: str) -> int:
        """Journal a steering message (injected within the current turn); its seq."""
        ...

    async def interrupt(self, run_id: str) -> tuple[str, int | None]:
        """Cut the in-flight atom and park the run: (outcome, seq of run.interrupted)."""

    async def set_limits(self, run_id: str, limits: dict[str, Any]) -> dict[str, Any]:
        """Journal `limits.changed` (limits validated by `core.budget.check_change`); its data."""
        ...

    async def resume(self, run_id: str) -> str:
        """Resume a paused run, or one that failed on a limit since raised; its status."""
        ...

    async def add_schedule(self, spec: AgentSpec, *, latest: bool) -> dict[str, Any]:
        """Store the agent and schedule its `schedule` (pinned, or its latest version)."""
        ...

    async def list_schedules(self) -> list[dict[str, Any]]: ...

    async def delete_schedule(self, agent: str) -> None:
        """An error naming the agent when it has no schedule."""
        ...

    async def set_schedule_enabled(self, agent: str, enabled: bool) -> dict[str, Any]: ...

    async def put_secret(self, name: str, value: str, allow_urls: list[str]) -> None: ...

    async def list_secrets(self) -> dict[str, list[str] | None]:
        """name -> the URL patterns it may be sent to (None: a server does not say)."""
        ...

    async def list_memory(self, agent: str) -> list[MemoryItem]:
        """The notes `agent` keeps across runs, oldest first."""
        ...

    async def delete_memory(self, agent: str, key: str) -> None:
        """Forget one note; an error naming it when there is none."""
        ...

    async def clear_memory(self, agent: str) -> int:
        """Forget every note of `agent`; how many there were."""
        ...


@asynccontextmanager
async def open_backend(
    db: str | None, server: str | None, token: str | None, *, create: bool = False
) -> AsyncIterator[Backend]:
    """The server's back end with --server, else the database's. Only commands that
    write pass `create=True`: the others never leave an empty database behind a typo."""
    if server:
        from everruns.cli.remote import RemoteBackend

        async with RemoteBackend.connect(server, token) as remote:
            yield remote
    else:
        from everruns.cli.local import LocalBackend

        async with LocalBackend.open(db, create=create) as local:
            yield local


async def resolve_run(backend: Backend, run_id: str) -> str:
    """The full id of the run `run_id` names: itself, or the one run whose id starts with
    it (`run_` may be left out). None: `RunNotFound`; several: an error listing them."""
    prefix = run_id.strip()
    if not prefix:
        raise CliError("give a run id (or the start of one)", EXIT_USAGE)
    ids = await backend.run_ids_starting(prefix)
    if not ids and not prefix.startswith("run_"):
        ids = await backend.run_ids_starting("run_" + prefix)
    if prefix in ids:
        return prefix
    if len(ids) == 1:
        return ids[0]
    if not ids:
        raise RunNotFound(run_id)
    shown = ", ".join(ids[:SHOWN_CANDIDATES]) + (", ..." if len(ids) > SHOWN_CANDIDATES else "")
    raise CliError(
        f"{run_id!r} is the start of several run ids ({shown}); give more characters",
        EXIT_USAGE,
    )
