"""The run's workspace: files that survive crashes and move with the run.

The truth is in the journal: each tool.completed/tool.failed event carries the
workspace changes its call made (`files: {path: sha256 | null}`), and contents
live in the `blobs` table, content-addressed. A worker materializes a fresh
local directory from the fold when it claims the run, so a resumed run sees
exactly the files its completed steps wrote — writes of a call that never
completed are gone with the old worker's disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from everruns.core.files import DEFAULT_EXCLUDE, excluded
from everruns.store import Store
from everruns.tools.base import ToolError

MAX_FILE_BYTES = 50_000_000


def workspace_root(db_url: str | None) -> Path:
    """Where a worker lays out its runs' workspaces: `EVERRUNS_WORKSPACE_ROOT`, else
    `$EVERRUNS_HOME/workspaces`, else `workspaces/` next to a SQLite database file, else
    `~/.everruns/workspaces` — never the current directory of whatever command runs."""
    explicit = os.environ.get("EVERRUNS_WORKSPACE_ROOT")
    if explicit:
        return Path(explicit).absolute()
    home = os.environ.get("EVERRUNS_HOME")
    if home:
        return Path(home).absolute() / "workspaces"
    if db_url:
        from sqlalchemy.engine import make_url

        parsed = make_url(db_url)
        if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
            return Path(parsed.database).absolute().parent / "workspaces"
    return Path.home() / ".everruns" / "workspaces"


class PathEscape(ToolError):
    pass


def confine(root: Path, relative: str) -> Path:
    """The absolute path for `relative` inside root; refuses escapes (.., absolute
    paths, symlinks that lead outside)."""
    if not relative or relative.strip() in (".", "./"):
        return root.resolve()
    if "\x00" in relative:
        raise PathEscape("path contains a NUL byte")
    candidate = Path(relative)
    if candidate.is_absolute():
        raise PathEscape(
            f"{relative!r}: absolute paths are not allowed; use a path relative to the workspace"
        )
    try:
        resolved = (root / candidate).resolve()
    except (OSError, RuntimeError):  # a symlink loop
        raise PathEscape(f"{relative!r} cannot be resolved (a symlink loop?)") from None
    base = root.resolve()
    if resolved != base and base not in resolved.parents:
        raise PathEscape(f"{relative!r} is outside the workspace")
    return resolved


def replace_file(label: str, target: Path, data: bytes) -> None:
    """Write `data` as the file `target` (named `label` in messages, never by its host path).

    A new file is renamed over the old name, so a write never goes through a hard
    link (or a symlink swapped in meanwhile) to a file elsewhere; a target that
    already has other names (a hard link, maybe to a file outside) is refused.
    """
    if target.is_dir():
        raise ToolError(f"{label or '.'!r} is a folder, not a file")
    try:
        st = target.lstat()
        links, mode = st.st_nlink, st.st_mode & 0o7777
    except FileNotFoundError:
        links, mode = 1, None
    except OSError as exc:
        raise ToolError(f"{label!r}: {exc.strerror}") from None
    if links > 1:
        raise ToolError(
            f"{label!r} is a hard link (the file has {links} names, maybe outside the "
            "workspace); refusing to write through it"
        )
    temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(temp, "xb") as f:
            f.write(data)
            if mode is not None:
                os.fchmod(f.fileno(), mode)  # an edited script stays executable
        os.replace(temp, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise ToolError(f"{label!r}: {exc.strerror or type(exc).__name__}") from None


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Workspace:
    def __init__(
        self,
        store: Store,
        run_id: str,
        files: dict[str, str],
        root: Path | None = None,
        exclude: Iterable[str] = DEFAULT_EXCLUDE,
    ):
        base = root or workspace_root(getattr(store, "url", None))
        self.store = store
        self.exclude = tuple(exclude)
        self.path = (base / run_id).absolute()
        self.manifest: dict[str, str] = dict(files)
        self._stats: dict[str, tuple[int, int]] = {}
        self.materialized = False
        self._lock = asyncio.Lock()

    async def materialize(self) -> Path:
        """Lay out the journaled files in a fresh local directory (once per claim)."""
        async with self._lock:
            if self.materialized:
                return self.path
            blobs = await self.store.get_blobs(sorted(set(self.manifest.values())))
            await asyncio.to_thread(self._write_all, blobs)
            self.materialized = True
            return self.path

    def _write_all(self, blobs: dict[str, bytes]) -> None:
        if self.path.exists():
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True)
        for rel, sha in self.manifest.items():
            target = self.path / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(blobs[sha])
            st = target.stat()
            self._stats[rel] = (st.st_size, st.st_mtime_ns)

    def _scan(self) -> tuple[dict[str, str | None], dict[str, bytes]]:
        changes: dict[str, str | None] = {}
        contents: dict[str, bytes] = {}
        seen: set[str] = set()
        for dirpath, dirnames, filenames in os.walk(self.path):
            dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
            for name in filenames:
                full = os.path.join(dirpath, name)
                if os.path.islink(full) or not os.path.isfile(full):
                    continue
                rel = os.path.relpath(full, self.path).replace(os.sep, "/")
                if excluded(rel, self.exclude) and rel not in self.manifest:
                    continue  # build litter (__pycache__/ ...) is never journaled
                seen.add(rel)
                st = os.stat(full)
                if self._stats.get(rel) == (st.st_size, st.st_mtime_ns) and rel in self.manifest:
                    continue
                if st.st_size > MAX_FILE_BYTES:
                    continue
                data = Path(full).read_bytes()
                sha = _sha(data)
                self._stats[rel] = (st.st_size, st.st_mtime_ns)
                if self.manifest.get(rel) != sha:
                    changes[rel] = sha
                    contents[sha] = data
        for rel in self.manifest:
            if rel not in seen:
                changes[rel] = None
                self._stats.pop(rel, None)
        return changes, contents

    async def commit(self) -> dict[str, str | None]:
        """Changes since the last commit, with their contents stored as blobs.

        The caller journals the returned mapping with the tool call's result;
        only then do the changes become part of the run.
        """
        if not self.materialized:
            return {}
        async with self._lock:
            changes, contents = await asyncio.to_thread(self._scan)
            if contents:
                await self.store.put_blobs(contents)
            for rel, sha in changes.items():
                if sha is None:
                    self.manifest.pop(rel, None)
                else:
                    self.manifest[rel] = sha
            return changes


async def export_files(store: Store, files: dict[str, str], target: Path) -> int:
    """Write a run's workspace (as journaled) into `target`; returns the file count."""
    blobs = await store.get_blobs(sorted(set(files.values())))
    for rel, sha in files.items():
        replace_file(rel, confine(target, rel), blobs[sha])
    return len(files)


def collect_inputs(
    files: Iterable[Path], dirs: Iterable[Path], exclude: Iterable[str] = DEFAULT_EXCLUDE
) -> dict[str, bytes]:
    """The files handed to a new run: each `--file` at its name, the contents of each
    `--dir` at the workspace root (the exclude patterns applied). Raises ValueError
    naming a missing path, a file too large, or two inputs with one name."""
    patterns = tuple(exclude)
    found: dict[str, bytes] = {}

    def add(rel: str, source: Path) -> None:
        if rel in found:
            raise ValueError(f"two input files would be {rel!r} in the workspace")
        size = source.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ValueError(f"{source}: {size} bytes is over the {MAX_FILE_BYTES}-byte limit")
        found[rel] = source.read_bytes()

    for file in files:
        if not file.is_file():
            raise ValueError(f"--file {file}: not a file")
        add(file.name, file)
    for folder in dirs:
        if not folder.is_dir():
            raise ValueError(f"--dir {folder}: not a directory")
        for source in sorted(folder.rglob("*")):
            rel = source.relative_to(folder).as_posix()
            if source.is_symlink() or not source.is_file() or excluded(rel, patterns):
                continue
            add(rel, source)
    return found


async def store_inputs(store: Store, contents: dict[str, bytes]) -> dict[str, str]:
    """Store input files as blobs; the `{path: sha256}` manifest for run.created."""
    manifest = {rel: _sha(data) for rel, data in contents.items()}
    await store.put_blobs({manifest[rel]: data for rel, data in contents.items()})
    return manifest


def check_input_path(rel: str) -> str:
    """A workspace path given by a client: relative, no `..`, no NUL (ValueError else)."""
    clean = rel.strip()
    parts = clean.split("/")
    if not clean or clean.startswith("/") or "\x00" in clean or ".." in parts or "" in parts:
        raise ValueError(f"{rel!r} is not a relative workspace path (a/b.txt)")
    return clean
