"""Fleet-wide concurrency limits for tools (one row per call holding a slot of a key),
and the runs row's latest tool progress.

A slot expires on its own (`expires_at`), so a worker killed while holding one
gives it back after the tool's timeout at the latest.

Revision ID: 0010
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0011"


def upgrade() -> None:
    # The latest ctx.progress() of a tool call (JSON), projected from the journal.
    op.add_column("runs", sa.Column("progress", sa.Text, nullable=True))
    op.create_table(
        "rate_slots",
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("holder", sa.String(255), primary_key=True),
        sa.Column("expires_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("rate_slots")
    op.drop_column("runs", "progress")
