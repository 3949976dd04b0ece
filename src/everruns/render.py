"""Human-readable rendering of events and times for the CLI."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any


def format_status_time(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def format_cost(cost_usd: float | None, known: bool = True) -> str:
    """A cost as the CLI shows it: "unknown" when a call had no price, never $0.0000."""
    if not known or cost_usd is None:
        return "unknown"
    return f"${cost_usd:.4f}"


def _usage_tokens(usage: dict[str, Any]) -> str:
    approx = "~" if usage.get("estimated") else ""
    return f"{approx}{usage.get('input_tokens', 0)}+{approx}{usage.get('output_tokens', 0)} tok"


def _short(value: Any, width: int = 100) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _describe(kind: str, data: dict[str, Any]) -> str:
    if kind == "run.created":
        agent = data.get("agent", {})
        return f"{agent.get('name')} v{agent.get('version')}: {_short(data.get('input') or '')}"
    if kind == "run.started":
        note = " (takeover)" if data.get("takeover") else ""
        return f"worker {data.get('worker')} epoch {data.get('epoch')}{note}"
    if kind == "message.user":
        return ("(steer) " if data.get("steer") else "") + _short(data.get("content", ""))
    if kind == "llm.started":
        return f"step {data.get('step')} attempt {data.get('attempt')} ({data.get('model')})"
    if kind == "llm.completed":
        message = data.get("message", {})
        calls = message.get("tool_calls") or []
        usage = data.get("usage") or {}
        parts = []
        if message.get("content"):
            parts.append(_short(message["content"]))
        if calls:
            parts.append(
                "→ " + ", ".join(f"{c['name']}({_short(c.get('arguments'), 40)})" for c in calls)
            )
        cached = usage.get("cached_input_tokens")
        tokens = _usage_tokens(usage)
        if cached:
            tokens += f", {cached} cached"
        parts.append(f"[{tokens}]")
        if data.get("continuation"):
            parts.insert(0, "(continued)")
        if data.get("truncated"):
            parts.append("[truncated at max_tokens]")
        return " ".join(parts)
    if kind == "llm.failed":
        retry = " (will retry)" if data.get("retryable") else ""
        charged = f" [{_usage_tokens(data['usage'])}]" if data.get("usage") else ""
        return f"{data.get('class')}: {_short(data.get('error', ''))}{retry}{charged}"
    if kind == "llm.charged":
        return f"attempt {data.get('attempt')} {data.get('reason')}: [{_usage_tokens(data.get('usage') or {})}]"
    if kind == "limits.changed":
        changes = ", ".join(
            f"{k} {data.get('old', {}).get(k)} → {v}" for k, v in (data.get("new") or {}).items()
        )
        return f"by {data.get('by')}: {changes}"
    call = f"{data.get('name')} [{data.get('call_id')}]"
    if kind == "tool.started":
        return f"{call} attempt {data.get('attempt')} ({data.get('effect')})"
    if kind == "tool.completed":
        return f"{call} → {_short(data.get('output', ''))}"
    if kind == "tool.failed":
        return f"{call} ✗ {_short(data.get('error', ''))}"
    if kind == "run.waiting":
        if data.get("wake_at") is None:
            calls = ", ".join(data.get("calls") or [])
            return f"{data.get('reason')} {calls}".strip() + " (until a signal)"
        return f"{data.get('reason')} until {format_status_time(data.get('wake_at'))}"
    if kind == "approval.requested":
        return f"{call} {_short(data.get('arguments'), 80)}: everruns approve/deny"
    if kind in ("approval.granted", "approval.denied"):
        return f"[{data.get('call_id')}] {_short(data.get('reason') or '')}".strip()
    if kind == "tool.waiting" and data.get("wait_for"):
        return f"{call} waits for {data.get('mode')} of {', '.join(data['wait_for'])}"
    if kind == "child.finished":
        return f"{data.get('run_id')} {data.get('status')}: {_short(data.get('result') or data.get('error') or '')}"
    if kind == "context.compacted":
        return f"messages before #{data.get('until')} summarized ({len(data.get('summary') or '')} chars)"
    if kind == "tool.waiting":
        return f"{call} sleeps until {format_status_time(data.get('wake_at'))}"
    if kind == "tool.retrying":
        return (
            f"{call} attempt {data.get('attempt')}: "
            f"{_short(data.get('reason') or '')}; again at {format_status_time(data.get('retry_at'))}"
        )
    if kind == "llm.fallback":
        return f"{data.get('from')} → {data.get('to')} ({data.get('reason')})"
    if kind == "outcome.graded":
        verdict = str(data.get("verdict", "")).replace("_", " ")
        return f"iteration {data.get('iteration')}: {verdict} {_short(data.get('feedback') or '')}"
    if kind == "run.interrupted":
        cut = [f"{t.get('name')} ({t.get('outcome')})" for t in data.get("tools") or []]
        if data.get("llm"):
            cut.insert(0, f"LLM call attempt {data['llm'].get('attempt')}")
        return "cut: " + (", ".join(cut) or "nothing in flight") + "; waits for a message"
    if kind == "run.completed":
        return _short(data.get("result") or "", 200)
    if kind in ("run.failed", "run.cancelled"):
        return f"{data.get('reason')}: {_short(data.get('error') or '', 200)}"
    return _short(data)


def format_event(event: dict[str, Any]) -> str:
    seq = event.get("seq")
    return f"{seq:>4} {event['type']:<15} {_describe(event['type'], event.get('data', {}))}"
