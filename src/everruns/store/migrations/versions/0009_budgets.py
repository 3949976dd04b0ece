"""Budgets: the runs row projects how many of a run's calls had no price and the limits
`everruns budget` set over its spec's; an index on `parent_id` serves the tree sums.

Revision ID: 0009
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0012"


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(
            sa.Column("unpriced_calls", sa.Integer, nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("limits", sa.Text, nullable=True))
    op.create_index("ix_runs_parent", "runs", ["parent_id"])


def downgrade() -> None:
    op.drop_index("ix_runs_parent", table_name="runs")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("limits")
        batch.drop_column("unpriced_calls")
