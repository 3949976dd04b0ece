"""Schedule expressions: when an agent's scheduled runs fire.

Three forms, all in UTC:

* a 5-field cron expression: `minute hour day-of-month month day-of-week`
  (e.g. `0 9 * * 1-5`), or a macro such as `@hourly` / `@daily`;
* a 6-field cron expression with **seconds first** (e.g. `*/10 * * * * *`);
* `every <duration>` (e.g. `every 2s`, `every 15m`, `every 6h`): ticks at the
  multiples of the interval since the epoch, so every worker computes the same
  ticks.

`next_after(ts)` is the first tick strictly after `ts`; firing sets a
schedule's next tick to `next_after(now)`, so after downtime the missed ticks
are caught up by one run, not one per tick.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from croniter import croniter
from croniter.croniter import CroniterError

from everruns.core.durations import parse_duration

Overlap = Literal["skip", "queue", "cancel_previous"]
OVERLAP_POLICIES: tuple[str, ...] = ("skip", "queue", "cancel_previous")
MIN_INTERVAL = 1.0  # seconds; workers look for due schedules about twice a second

_MACROS = (
    "@yearly",
    "@annually",
    "@monthly",
    "@weekly",
    "@daily",
    "@midnight",
    "@hourly",
)


@dataclass(frozen=True)
class Schedule:
    expression: str
    interval: float | None = None  # `every <duration>`
    cron: str | None = None
    seconds_first: bool = False

    def next_after(self, ts: float) -> float:
        """The first tick strictly after `ts` (seconds since the epoch)."""
        if self.interval is not None:
            step = self.interval
            tick = (math.floor(ts / step) + 1) * step
            while tick <= ts:  # float rounding at an exact multiple
                tick += step
            return tick
        assert self.cron is not None
        tick = float(
            croniter(self.cron, ts, second_at_beginning=self.seconds_first).get_next(float)
        )
        while tick <= ts:  # never the same tick twice
            tick = float(
                croniter(self.cron, tick, second_at_beginning=self.seconds_first).get_next(float)
            )
        return tick

    def latest_at_or_before(self, ts: float) -> float:
        """The most recent tick at or before `ts`."""
        if self.interval is not None:
            step = self.interval
            tick = math.floor(ts / step) * step
            while tick > ts:
                tick -= step
            return tick
        assert self.cron is not None
        prev = float(
            croniter(self.cron, ts, second_at_beginning=self.seconds_first).get_prev(float)
        )
        following = self.next_after(prev)
        return following if following <= ts else prev


def parse_schedule(expression: str) -> Schedule:
    """Parse a schedule expression; raises ValueError with a readable message."""
    if not isinstance(expression, str) or not expression.strip():
        raise ValueError("a schedule must be a cron expression or `every <duration>`")
    text = " ".join(expression.split())
    lowered = text.lower()
    if lowered.startswith("every ") or lowered == "every":
        rest = text[5:].strip()
        if not rest:
            raise ValueError("`every` needs a duration, e.g. `every 10m`")
        try:
            interval = parse_duration(rest)
        except ValueError as exc:
            raise ValueError(f"`every {rest}`: {exc}") from None
        if interval < MIN_INTERVAL:
            raise ValueError(f"`every {rest}` is too often: the minimum is {MIN_INTERVAL:g}s")
        return Schedule(expression=text, interval=interval)
    fields = text.split(" ")
    if lowered in _MACROS:
        cron, seconds_first = lowered, False
    elif len(fields) == 5:
        cron, seconds_first = text, False
    elif len(fields) == 6:
        cron, seconds_first = text, True
    else:
        raise ValueError(
            f"{expression!r} has {len(fields)} fields: use 5 cron fields "
            "(minute hour day month weekday), 6 with seconds first, or `every <duration>`"
        )
    try:
        croniter(cron, 0.0, second_at_beginning=seconds_first).get_next(float)
    except (CroniterError, ValueError, KeyError) as exc:
        raise ValueError(f"{expression!r} is not a valid cron expression: {exc}") from None
    return Schedule(expression=text, cron=cron, seconds_first=seconds_first)
