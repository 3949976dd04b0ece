"""Database access: the journal, leases and projections, on SQLite or PostgreSQL."""

from everruns.errors import Fenced, Moved, RunNotFound, StoreError
from everruns.store.database import resolve_url
from everruns.store.records import Claim, RunRow, new_id
from everruns.store.store import Store

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
