"""Database access: the journal, leases and projections, on SQLite or PostgreSQL."""

from everruns.store.database import resolve_url
from everruns.store.store import (
    Claim,
    Fenced,
    Moved,
    RunNotFound,
    RunRow,
    Store,
    StoreError,
    new_id,
)

__all__ = [
    "Claim",
    "Fenced",
    "Moved",
    "RunNotFound",
    "RunRow",
    "Store",
    "StoreError",
    "new_id",
    "resolve_url",
]
