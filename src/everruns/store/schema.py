"""Tables. The journal (`events`) is the truth; `runs` is a projection plus lease state.

Times are seconds since the epoch as floats (see docs/architecture.md).
JSON is stored as text so both databases behave the same.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

agents = sa.Table(
    "agents",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("spec", sa.Text, nullable=False),
    sa.Column("digest", sa.String(64), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("archived", sa.Boolean, nullable=False, server_default=sa.false()),
    # Where the spec came from: "local" (CLI, in-process) or "api" (HTTP). Rows written
    # without it count as "api", the origin the operator's policy restricts most.
    sa.Column("origin", sa.String(8), nullable=False, server_default="api"),
)

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("agent_name", sa.String(128), nullable=False),
    sa.Column("agent_version", sa.Integer, nullable=False),
    sa.Column("parent_id", sa.String(40), nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    # Leasing and fencing.
    sa.Column("epoch", sa.Integer, nullable=False, server_default="0"),
    sa.Column("lease_owner", sa.String(64), nullable=True),
    sa.Column("lease_expires_at", sa.Float, nullable=True),
    # When the run is next claimable; NULL = not runnable until a signal.
    sa.Column("wake_at", sa.Float, nullable=True),
    sa.Column("last_seq", sa.Integer, nullable=False, server_default="0"),
    # Crash-loop protection: last_seq when the current holder started, and
    # how many holders in a row died without progress.
    sa.Column("claim_seq", sa.Integer, nullable=False, server_default="0"),
    # The seq of the last event that finished something (not a *.started event).
    sa.Column("progress_seq", sa.Integer, nullable=False, server_default="0"),
    sa.Column("crashes", sa.Integer, nullable=False, server_default="0"),
    sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("pause_requested", sa.Boolean, nullable=False, server_default=sa.false()),
    # An interrupt asked of the holder (migration 0011): stop the atom, park the run.
    sa.Column("interrupt_requested", sa.Boolean, nullable=False, server_default=sa.false()),
    # A steer was journaled: the holder folds it in before its next decision.
    sa.Column("steer_requested", sa.Boolean, nullable=False, server_default=sa.false()),
    # Projection of the fold, for listing without reading the journal.
    sa.Column("steps", sa.Integer, nullable=False, server_default="0"),
    sa.Column("input_tokens", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("output_tokens", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("cost_usd", sa.Float, nullable=False, server_default="0"),
    # Budgets (0009): own calls without a price (cost unknown when > 0), and the limits
    # `everruns budget` set over the spec's (JSON), as the latest `limits.changed` says.
    sa.Column("unpriced_calls", sa.Integer, nullable=False, server_default="0"),
    sa.Column("limits", sa.Text, nullable=True),
    # Of input_tokens, those read from a prompt cache (for the cache hit ratio).
    sa.Column("cached_input_tokens", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("input", sa.Text, nullable=True),
    sa.Column("result", sa.Text, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    # The grader's verdict (`outcome:` on the agent): satisfied | not_satisfied | revising.
    sa.Column("verdict", sa.String(16), nullable=True),
    # The latest ctx.progress() of a tool call, journaled with its result (JSON).
    sa.Column("progress", sa.Text, nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Index("ix_runs_claim", "wake_at"),
    sa.Index("ix_runs_status", "status", "created_at"),
    sa.Index("ix_runs_lease_owner", "lease_owner"),
    sa.Index("ix_runs_created", "created_at", "id"),
    sa.Index("ix_runs_parent", "parent_id"),
)

events = sa.Table(
    "events",
    metadata,
    sa.Column("run_id", sa.String(40), primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("type", sa.String(48), nullable=False),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("data", sa.Text, nullable=False),
)

workers = sa.Table(
    "workers",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("hostname", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("heartbeat_at", sa.Float, nullable=False),
    sa.Column("stopped_at", sa.Float, nullable=True),
    # Worker health (`everruns doctor`): the everruns version it runs, and its clock minus
    # the database's (seconds), measured at registration and then every few renewals.
    sa.Column("version", sa.String(64), nullable=True),
    sa.Column("clock_skew", sa.Float, nullable=True),
)

breakers = sa.Table(
    "breakers",
    metadata,
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("failures", sa.Integer, nullable=False, server_default="0"),
    sa.Column("open_until", sa.Float, nullable=True),
    sa.Column("updated_at", sa.Float, nullable=False),
)

rate_buckets = sa.Table(
    "rate_buckets",
    metadata,
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("requests", sa.Float, nullable=False),
    sa.Column("tokens", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

# Concurrency slots of fleet-wide tool rate limits (one row per call holding one).
rate_slots = sa.Table(
    "rate_slots",
    metadata,
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("holder", sa.String(255), primary_key=True),
    sa.Column("expires_at", sa.Float, nullable=False),
)

blobs = sa.Table(
    "blobs",
    metadata,
    sa.Column("sha256", sa.String(64), primary_key=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("content", sa.LargeBinary, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

api_tokens = sa.Table(
    "api_tokens",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("last_used_at", sa.Float, nullable=True),
    sa.Column("revoked", sa.Boolean, nullable=False, server_default=sa.false()),
)

secrets = sa.Table(
    "secrets",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("ciphertext", sa.Text, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    # JSON list of URL patterns the secret may be sent to (none: usable nowhere).
    sa.Column("allow_urls", sa.Text, nullable=False, server_default="[]"),
)

# Schedules: one per agent; every worker fires the due ones (see Store.fire_due_schedules).
schedules = sa.Table(
    "schedules",
    metadata,
    sa.Column("agent_name", sa.String(128), primary_key=True),
    sa.Column("expression", sa.String(255), nullable=False),
    # The pinned agent version, or NULL for the latest version at each fire.
    sa.Column("agent_version", sa.Integer, nullable=True),
    sa.Column("overlap", sa.String(16), nullable=False, server_default="skip"),
    sa.Column("input", sa.Text, nullable=True),
    sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("next_fire_at", sa.Float, nullable=False),
    sa.Column("last_fired_at", sa.Float, nullable=True),
    sa.Column("last_run_id", sa.String(40), nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Index("ix_schedules_due", "enabled", "next_fire_at"),
)

# Runs a schedule created that were not yet seen finished (for the overlap policy).
# The primary key makes a second run for the same tick impossible.
schedule_runs = sa.Table(
    "schedule_runs",
    metadata,
    sa.Column("agent_name", sa.String(128), primary_key=True),
    sa.Column("tick", sa.Float, primary_key=True),
    sa.Column("run_id", sa.String(40), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

# Agent memory across runs (the `memory` built-in tool).
agent_notes = sa.Table(
    "agent_notes",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("agent_name", sa.String(128), nullable=False),
    sa.Column("run_id", sa.String(40), nullable=True),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("idempotency_key", sa.String(255), nullable=True),
    sa.UniqueConstraint("agent_name", "idempotency_key", name="uq_agent_notes_idempotency"),
    sa.Index("ix_agent_notes_agent", "agent_name", "ts", "id"),
)

# ------------------------------------------------------------ run API verbs (migration 0011)

# Idempotency-Key of state-changing API requests: the first request claims the key
# (insert-first), its response is kept for a repeat until `expires_at` (>= 24 h).
idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column("scope", sa.String(64), primary_key=True),  # sha256 of the caller's credential
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("fingerprint", sa.String(64), nullable=False),  # method, path and body
    sa.Column("status", sa.Integer, nullable=True),  # NULL while the first request runs
    sa.Column("body", sa.Text, nullable=True),
    sa.Column("content_type", sa.String(128), nullable=True),
    sa.Column("locked_until", sa.Float, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Index("ix_idempotency_expires", "expires_at"),
)

# Webhook subscriptions: global (run_id NULL) or for one run. An agent's own
# `webhooks:` live in its spec.
webhooks = sa.Table(
    "webhooks",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("events", sa.Text, nullable=False),  # JSON list of event types
    sa.Column("secret_ref", sa.String(128), nullable=True),
    sa.Column("run_id", sa.String(40), nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Index("ix_webhooks_run", "run_id"),
)

# The outbox: one row per journaled event a webhook may be told about, written by the
# same commit as the event; the delivery loop fans it out into deliveries.
webhook_outbox = sa.Table(
    "webhook_outbox",
    metadata,
    sa.Column("run_id", sa.String(40), primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("type", sa.String(48), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

webhook_deliveries = sa.Table(
    "webhook_deliveries",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),  # stable: the receiver dedups by it
    sa.Column("webhook", sa.String(80), nullable=False),  # a webhook id or agent:<n>
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("secret_ref", sa.String(128), nullable=True),
    sa.Column("run_id", sa.String(40), nullable=False),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("event_type", sa.String(48), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # pending | delivered | failed
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("history", sa.Text, nullable=False, server_default="[]"),  # last attempts
    sa.Column("next_attempt_at", sa.Float, nullable=False),
    sa.Column("locked_until", sa.Float, nullable=False, server_default="0"),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("delivered_at", sa.Float, nullable=True),
    sa.Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
    sa.Index("ix_webhook_deliveries_run", "run_id", "seq"),
)
