"""A run's workspace files as the journal tells them: which files exist, which
event last changed each, and what each step changed (pure).

Files enter a run with `run.created` (`--file`/`--dir`, the API's `files`) and
change with the results of the tool calls that wrote them (`files: {path: sha256 |
null}` on tool.completed / tool.failed / tool.retrying). The exclude patterns of
`workspace.exclude` keep build litter (`__pycache__/`, `*.pyc`, `.git/`) out.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from everruns.core.events import LLM_COMPLETED, Event

DEFAULT_EXCLUDE = ("__pycache__/", "*.pyc", ".git/")


def excluded(path: str, patterns: Iterable[str]) -> bool:
    """True when a workspace path (posix, relative) matches a pattern: `name/` matches a
    folder of that name anywhere, others match the file name or the whole path."""
    parts = path.split("/")
    for pattern in patterns:
        if pattern.endswith("/"):
            folder = pattern.rstrip("/")
            if any(fnmatch.fnmatchcase(p, folder) for p in parts[:-1]):
                return True
        elif fnmatch.fnmatchcase(parts[-1], pattern) or fnmatch.fnmatchcase(path, pattern):
            return True
    return False


@dataclass(frozen=True)
class FileEntry:
    path: str
    sha256: str
    seq: int  # the event that last changed it
    step: int  # LLM steps completed before that event (0: handed in at the start)
    call_id: str | None  # the tool call that wrote it (None: handed in)


@dataclass(frozen=True)
class FileChange:
    """The workspace changes journaled with one event (one tool call's, usually)."""

    seq: int
    step: int
    call_id: str | None
    name: str | None
    files: dict[str, str | None]  # path -> sha256 (None: deleted)


def file_changes(events: Iterable[Event]) -> list[FileChange]:
    changes: list[FileChange] = []
    step = 0
    for event in events:
        if event.type == LLM_COMPLETED:
            step += 1
        files: dict[str, Any] = event.data.get("files") or {}
        if files:
            changes.append(
                FileChange(
                    event.seq, step, event.data.get("call_id"), event.data.get("name"), files
                )
            )
    return changes


def file_index(changes: Iterable[FileChange]) -> dict[str, FileEntry]:
    """path -> the file's entry, for the files that exist after `changes` (in order)."""
    index: dict[str, FileEntry] = {}
    for change in changes:
        for path, sha in change.files.items():
            if sha is None:
                index.pop(path, None)
            else:
                index[path] = FileEntry(path, sha, change.seq, change.step, change.call_id)
    return dict(sorted(index.items()))
