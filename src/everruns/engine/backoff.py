"""Transitional: the back-off policy moved to `everruns.core.backoff` (re-exported here)."""

from everruns.core.backoff import backoff_delay

__all__ = ["backoff_delay"]
