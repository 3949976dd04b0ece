"""Files into a run and artifacts out of it.

In: `POST /v1/blobs` stores one file's bytes (the raw request body, content-addressed)
and answers its sha256; `POST /v1/runs` then names the run's input files as
`files: {path: sha256}`. A blob upload (rather than multipart) keeps run creation a
JSON request, stores each file once however many runs use it, and lets a client send
files of any number one request each (each under the server's body limit).

Out: the workspace as the journal tells it (core/files.py) — a listing with size,
hash and the seq/step/call that last changed each file, one file's content, and all
of it as a zip.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import mimetypes
import zipfile
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from everruns.api.problems import Problem
from everruns.core.files import FileChange
from everruns.engine.artifacts import listing, run_changes, run_file_contents, run_files
from everruns.errors import RunNotFound
from everruns.store import Store
from everruns.tools.workspace import check_input_path


async def input_manifest(store: Store, files: dict[str, str] | None) -> dict[str, str]:
    """A run's `files` checked: safe relative paths, each blob uploaded (422 else)."""
    if not files:
        return {}
    manifest: dict[str, str] = {}
    for path, sha in files.items():
        try:
            manifest[check_input_path(path)] = sha
        except ValueError as exc:
            raise Problem(422, "validation-error", "Invalid request", f"files: {exc}") from None
    sizes = await store.blob_sizes(sorted(set(manifest.values())))
    missing = sorted(p for p, sha in manifest.items() if sha not in sizes)
    if missing:
        raise Problem(
            422,
            "validation-error",
            "Invalid request",
            f"files: no uploaded blob for {', '.join(missing[:5])} (POST /v1/blobs first)",
        )
    return manifest


def add_file_routes(app: FastAPI, auth: list[Any]) -> None:
    def store_of(request: Request) -> Store:
        return request.app.state.store

    async def changes(request: Request, run_id: str) -> list[FileChange]:
        try:
            return await run_changes(store_of(request), run_id)
        except RunNotFound as exc:
            raise Problem(404, "run-not-found", "Run not found", str(exc)) from None

    @app.post("/v1/blobs", tags=["files"], status_code=201, dependencies=auth)
    async def upload_blob(request: Request) -> dict[str, Any]:
        """Store the request body (any bytes) as a blob; its sha256 names it in a run's
        `files`."""
        data = await request.body()
        sha = hashlib.sha256(data).hexdigest()
        await store_of(request).put_blobs({sha: data})
        return {"sha256": sha, "size": len(data)}

    @app.get("/v1/runs/{run_id}/files", tags=["files"], dependencies=auth)
    async def list_files(run_id: str, request: Request) -> list[dict[str, Any]]:
        """The run's workspace files: path, size, sha256, and the seq, step and tool
        call that last changed each (seq 1, step 0: handed in at the start)."""
        try:
            return await run_files(store_of(request), run_id)
        except RunNotFound as exc:
            raise Problem(404, "run-not-found", "Run not found", str(exc)) from None

    @app.get("/v1/runs/{run_id}/changes", tags=["files"], dependencies=auth)
    async def list_changes(run_id: str, request: Request) -> list[dict[str, Any]]:
        """What each event changed in the workspace (the per-step diff of the timeline)."""
        return [vars(c) for c in await changes(request, run_id)]

    @app.get(
        "/v1/runs/{run_id}/files.zip",
        tags=["files"],
        dependencies=auth,
        response_class=Response,
        responses={200: {"content": {"application/zip": {}}, "description": "The files."}},
    )
    async def files_zip(run_id: str, request: Request) -> Response:
        await changes(request, run_id)  # 404 for no such run
        contents = await run_file_contents(store_of(request), run_id)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for path, data in contents.items():
                archive.writestr(path, data)
        return Response(
            buffer.getvalue(),
            media_type="application/zip",
            headers={"Content-Disposition": f'attachment; filename="{run_id}-files.zip"'},
        )

    @app.get(
        "/v1/runs/{run_id}/files/{path:path}",
        tags=["files"],
        dependencies=auth,
        response_class=Response,
        responses={
            200: {
                "content": {"application/octet-stream": {}, "text/plain": {}},
                "description": "The content.",
            }
        },
    )
    async def get_file(run_id: str, path: str, request: Request) -> Response:
        """One file's content as the journal last recorded it (`?sha256=` for an earlier
        version named by a change)."""
        history = await changes(request, run_id)
        sha = request.query_params.get("sha256")
        if sha is None:
            entry = next((e for e in listing(history) if e["path"] == path), None)
            sha = entry["sha256"] if entry else None
        elif not any(c.files.get(path) == sha for c in history):
            sha = None
        if sha is None:
            raise Problem(404, "file-not-found", "File not found", f"{path!r} in run {run_id}")
        data = (await store_of(request).get_blobs([sha]))[sha]
        media = mimetypes.guess_type(path)[0] or "application/octet-stream"
        if media == "application/octet-stream" and _is_text(data):
            media = "text/plain; charset=utf-8"
        return Response(data, media_type=media, headers={"ETag": f'"{sha}"'})


def _is_text(data: bytes) -> bool:
    try:
        codecs.getincrementaldecoder("utf-8")().decode(data[:4096])  # a cut char is fine
    except UnicodeDecodeError:
        return False
    return b"\x00" not in data[:4096]
