"""Durations as written in specs and schedules: `90`, `90s`, `30m`, `6h`, `2d`, `1w`, `250ms`."""

from __future__ import annotations

import math
import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}


def parse_duration(value: str | float | int) -> float:
    """Seconds from `90`, `90s`, `30m`, `6h`, `2d`, `1w` or `250ms`."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 10m, 6h or 2d")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError(f"a duration must be a finite number of seconds, not {value}")
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a duration (use e.g. 30s, 10m, 6h, 2d)")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
