"""Render received spans (tests/helpers.py `OtlpReceiver`) as a small SVG waterfall:
one row per span, grouped by trace, indented by depth, errors in red."""

from __future__ import annotations

from html import escape
from typing import Any

ROW = 22
LABEL = 300
WIDTH = 900


def render_svg(spans: list[dict[str, Any]]) -> str:
    rows = _ordered(spans)
    start = min(s["start"] for s in spans)
    end = max(s["end"] for s in spans)
    scale = (WIDTH - LABEL - 70) / max(end - start, 1e-6)
    height = ROW * (len(rows) + 2)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        'font-family="sans-serif" font-size="12">',
        f'<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="#ffffff"/>',
        f'<text x="8" y="15" font-weight="bold">everruns trace ({end - start:.2f} s)</text>',
    ]
    for i, (depth, span) in enumerate(rows, start=1):
        y = ROW * i + 6
        x = LABEL + (span["start"] - start) * scale
        w = max(2.0, (span["end"] - span["start"]) * scale)
        color = "#d9534f" if span["status"] == "error" else _color(span["name"])
        label = escape(span["name"])
        ms = (span["end"] - span["start"]) * 1000
        out.append(f'<text x="{8 + 14 * depth}" y="{y + 13}">{label}</text>')
        out.append(
            f'<rect x="{x:.1f}" y="{y + 2}" width="{w:.1f}" height="{ROW - 8}" rx="2" '
            f'fill="{color}"/>'
        )
        out.append(f'<text x="{x + w + 4:.1f}" y="{y + 13}" fill="#555">{ms:.0f} ms</text>')
    out.append("</svg>")
    return "\n".join(out)


def _ordered(spans: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    """Depth-first by start time; a trace linked to a span follows it."""
    children: dict[str | None, list[dict[str, Any]]] = {}
    ids = {s["span_id"] for s in spans}
    for s in spans:
        parent = s["parent_id"] if s["parent_id"] in ids else None
        children.setdefault(parent, []).append(s)
    linked: dict[str, list[dict[str, Any]]] = {}
    for root in children.get(None, []):
        for _trace, span in root.get("links", []):
            linked.setdefault(span, []).append(root)
    out: list[tuple[int, dict[str, Any]]] = []

    def visit(span: dict[str, Any], depth: int) -> None:
        out.append((depth, span))
        for child in sorted(children.get(span["span_id"], []), key=lambda s: s["start"]):
            visit(child, depth + 1)
        for root in linked.get(span["span_id"], []):
            visit(root, depth + 1)

    linked_roots = {id(r) for rs in linked.values() for r in rs}
    for root in sorted(children.get(None, []), key=lambda s: s["start"]):
        if id(root) not in linked_roots:
            visit(root, 0)
    return out


def _color(name: str) -> str:
    if name.startswith("invoke_agent"):
        return "#5b7db1"
    if name.startswith("chat"):
        return "#4aa564"
    return "#e0a030"
