"""The run API verbs: idempotency keys, interrupt requests, webhooks and their outbox,
the grader's verdict.

The PostgreSQL trigger of 0008 also sends `everruns_control` when an interrupt or a steer is
requested for a leased run, so it reaches the holder at once, like a cancel.

Revision ID: 0011
Revises: 0016
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0016"

FUNCTION = """
CREATE OR REPLACE FUNCTION everruns_runs_notify() RETURNS trigger AS $$
BEGIN
  IF NEW.lease_owner IS NULL AND NEW.wake_at IS NOT NULL
     AND NEW.status IN ('queued', 'running', 'waiting')
     AND (TG_OP = 'INSERT' OR OLD.wake_at IS DISTINCT FROM NEW.wake_at
          OR OLD.lease_owner IS NOT NULL) THEN
    PERFORM pg_notify('everruns_wake', NEW.id);
  END IF;
  IF TG_OP = 'UPDATE' AND NEW.lease_owner IS NOT NULL
     AND ((NEW.cancel_requested AND NOT OLD.cancel_requested)
          OR (NEW.pause_requested AND NOT OLD.pause_requested)
          OR (NEW.interrupt_requested AND NOT OLD.interrupt_requested)
          OR (NEW.steer_requested AND NOT OLD.steer_requested)) THEN
    PERFORM pg_notify('everruns_control', NEW.lease_owner || ':' || NEW.id);
  END IF;
  RETURN NULL;
END
$$ LANGUAGE plpgsql
"""

TRIGGER = """
CREATE TRIGGER everruns_runs_notify
AFTER INSERT OR UPDATE OF wake_at, lease_owner, cancel_requested, pause_requested,
  interrupt_requested, steer_requested ON runs
FOR EACH ROW EXECUTE FUNCTION everruns_runs_notify()
"""


def upgrade() -> None:
    op.add_column(
        "runs",
        sa.Column("interrupt_requested", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.add_column(
        "runs",
        sa.Column("steer_requested", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.add_column("runs", sa.Column("verdict", sa.String(16), nullable=True))
    op.create_table(
        "idempotency_keys",
        sa.Column("scope", sa.String(64), primary_key=True),
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("status", sa.Integer, nullable=True),
        sa.Column("body", sa.Text, nullable=True),
        sa.Column("content_type", sa.String(128), nullable=True),
        sa.Column("locked_until", sa.Float, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
    )
    op.create_index("ix_idempotency_expires", "idempotency_keys", ["expires_at"])
    op.create_table(
        "webhooks",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("events", sa.Text, nullable=False),
        sa.Column("secret_ref", sa.String(128), nullable=True),
        sa.Column("run_id", sa.String(40), nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("ix_webhooks_run", "webhooks", ["run_id"])
    op.create_table(
        "webhook_outbox",
        sa.Column("run_id", sa.String(40), primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("type", sa.String(48), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("webhook", sa.String(80), nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("secret_ref", sa.String(128), nullable=True),
        sa.Column("run_id", sa.String(40), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("event_type", sa.String(48), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("history", sa.Text, nullable=False, server_default="[]"),
        sa.Column("next_attempt_at", sa.Float, nullable=False),
        sa.Column("locked_until", sa.Float, nullable=False, server_default="0"),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("delivered_at", sa.Float, nullable=True),
    )
    op.create_index(
        "ix_webhook_deliveries_due", "webhook_deliveries", ["status", "next_attempt_at"]
    )
    op.create_index("ix_webhook_deliveries_run", "webhook_deliveries", ["run_id", "seq"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS everruns_runs_notify ON runs")
        op.execute(FUNCTION)
        op.execute(TRIGGER)


def downgrade() -> None:
    for table in ("webhook_deliveries", "webhook_outbox", "webhooks", "idempotency_keys"):
        op.drop_table(table)
    op.drop_column("runs", "verdict")
    op.drop_column("runs", "steer_requested")
    op.drop_column("runs", "interrupt_requested")
