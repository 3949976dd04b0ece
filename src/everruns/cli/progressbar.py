"""`everruns run`'s progress bar: the latest ctx.progress() of the run's tools (Rich).

Fed by the ephemeral `tool.progress` events while a tool works and by the value
journaled with each result; absent until a tool reports progress.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class ToolProgressBar:
    def __init__(self, console: Console, enabled: bool = True):
        self.console = console
        self.enabled = enabled
        self.progress: Progress | None = None
        self.task: Any = None

    def update(self, value: dict[str, Any] | None, name: str | None = None) -> None:
        if not self.enabled or not value or value.get("done") is None:
            return
        if self.progress is None:
            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=self.console,
            )
            self.progress.start()
            self.task = self.progress.add_task("progress", total=None)
        label = value.get("note") or name or "progress"
        self.progress.update(
            self.task, completed=float(value["done"]), total=value.get("total"), description=label
        )

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
