"""Transitional: schedule math moved to `everruns.core.schedule` (re-exported here)."""

from everruns.core.schedule import *  # noqa: F403
from everruns.core.schedule import OVERLAP_POLICIES, Overlap, parse_schedule  # noqa: F401
