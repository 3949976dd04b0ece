"""Tools for the researcher example agent (examples/agents/researcher.yaml).

The spec refers to them as `research_tools:<function>` and says `python_path: [..]`
(relative to the spec file), so the CLI imports them from this folder whatever the
working directory, e.g. from the repo root

    .venv/bin/everruns run examples/agents/researcher.yaml

Each tool declares its effect class, which tells the engine what it may do after
a crash: `pure` and `idempotent` calls are simply run again if their result was
never journaled.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from everruns import ToolContext, ToolError, tool

HERE = Path(__file__).resolve().parent
DOCS_DIR = HERE / "docs"
# Reports go to examples/output/ unless RESEARCH_OUTPUT_DIR says otherwise (the tests use it).
OUTPUT_DIR = Path(os.environ.get("RESEARCH_OUTPUT_DIR") or HERE / "output")


def _doc_path(name: str) -> Path:
    """The file for a document name, refusing anything outside the docs folder."""
    file = name.strip()
    if not file.endswith(".md"):
        file += ".md"
    path = (DOCS_DIR / file).resolve()
    if (
        "/" in file
        or "\\" in file
        or ".." in file
        or file.startswith(".")
        or path.parent != DOCS_DIR
    ):
        raise ToolError(f"invalid document name {name!r}: use a name from list_documents()")
    return path


@tool(effect="pure")
def list_documents() -> list[str]:
    """List the documents in the local library, by name (pass a name to read_document)."""
    return sorted(p.stem for p in DOCS_DIR.glob("*.md"))


@tool(effect="pure")
def read_document(name: str) -> str:
    """Read one document of the local library as markdown.

    Args:
        name: a document name as returned by list_documents, e.g. "journaling".
    """
    path = _doc_path(name)
    if not path.is_file():
        raise ToolError(f"no document named {name!r}; available: {', '.join(list_documents())}")
    return path.read_text(encoding="utf-8")


def _slug(title: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
    if not slug:
        raise ToolError("the report title must contain letters or digits")
    return slug[:80]


@tool(effect="idempotent")
def write_report(title: str, body: str, ctx: ToolContext) -> str:
    """Save a markdown report to the output folder and return where it was written.

    Writing is idempotent: a repeated call (e.g. after a crash) overwrites the
    file with identical content, keyed by the call's idempotency key.

    Args:
        title: the report title; it also names the file.
        body: the report in markdown, without the title heading.
    """
    path = OUTPUT_DIR / f"{_slug(title)}.md"
    # Deterministic content (no timestamps): a retry writes the very same bytes.
    content = (
        f"# {title}\n\n{body.strip()}\n\n<!-- everruns idempotency key: {ctx.idempotency_key} -->\n"
    )
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{ctx.idempotency_key.replace(':', '_')}.tmp")
    partial.write_text(content, encoding="utf-8")
    os.replace(partial, path)  # atomic: readers see the old file or the new one, never half
    shown = path.relative_to(HERE) if path.is_relative_to(HERE) else path
    return f"wrote {len(content.encode())} bytes to {shown}"


_WEATHER = {"paris": "sunny, 21 C", "rome": "clear, 25 C", "london": "light rain, 14 C"}


@tool(effect="pure")
def lookup_weather(city: str) -> str:
    """Today's weather for a city (a fixed table, so the example runs offline)."""
    return f"{city}: {_WEATHER.get(city.strip().lower(), 'cloudy, 18 C')}"
