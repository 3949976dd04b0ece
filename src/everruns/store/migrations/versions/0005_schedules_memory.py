"""Schedules and agent memory.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    op.create_table(
        "schedules",
        sa.Column("agent_name", sa.String(128), primary_key=True),
        sa.Column("expression", sa.String(255), nullable=False),
        sa.Column("agent_version", sa.Integer, nullable=True),
        sa.Column("overlap", sa.String(16), nullable=False, server_default="skip"),
        sa.Column("input", sa.Text, nullable=True),
        sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("next_fire_at", sa.Float, nullable=False),
        sa.Column("last_fired_at", sa.Float, nullable=True),
        sa.Column("last_run_id", sa.String(40), nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_index("ix_schedules_due", "schedules", ["enabled", "next_fire_at"])
    op.create_table(
        "schedule_runs",
        sa.Column("agent_name", sa.String(128), primary_key=True),
        sa.Column("tick", sa.Float, primary_key=True),
        sa.Column("run_id", sa.String(40), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "agent_notes",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("agent_name", sa.String(128), nullable=False),
        sa.Column("run_id", sa.String(40), nullable=True),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("idempotency_key", sa.String(255), nullable=True),
        sa.UniqueConstraint("agent_name", "idempotency_key", name="uq_agent_notes_idempotency"),
    )
    op.create_index("ix_agent_notes_agent", "agent_notes", ["agent_name", "ts", "id"])


def downgrade() -> None:
    op.drop_index("ix_agent_notes_agent", "agent_notes")
    op.drop_table("agent_notes")
    op.drop_table("schedule_runs")
    op.drop_index("ix_schedules_due", "schedules")
    op.drop_table("schedules")
