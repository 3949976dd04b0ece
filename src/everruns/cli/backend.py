"""The one interface the run commands are written against.

`LocalBackend` (local.py) talks to the database through `everruns.store.Store`;
`RemoteBackend` (remote.py) talks to an `everruns server` through `AsyncClient`. A command
calls `open_backend(db, server, token)` and never asks which one it got.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Protocol

from everruns.cli.views import RunView
from everruns.spec import AgentSpec


class Backend(Protocol):
    async def start_run(
        self, spec: AgentSpec, input: str | None, files: dict[str, bytes] | None = None
    ) -> str:
        """Queue a run of `spec` (its workspace starting with `files`); its id."""
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

    async def set_limits(self, run_id: str, limits: dict[str, Any]) -> dict[str, Any]:
        """Journal `limits.changed` (limits validated by `core.budget.check_change`); its data."""
        ...

    async def resume(self, run_id: str) -> str:
        """Resume a paused run, or one that failed on a limit since raised; its status."""
        ...


@asynccontextmanager
async def open_backend(
    db: str | None, server: str | None, token: str | None
) -> AsyncIterator[Backend]:
    """The server's back end with --server, else the database's."""
    if server:
        from everruns.cli.remote import RemoteBackend

        async with RemoteBackend.connect(server, token) as remote:
            yield remote
    else:
        from everruns.cli.local import LocalBackend

        async with LocalBackend.open(db) as local:
            yield local
