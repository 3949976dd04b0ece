"""Workers report their version and their clock's offset from the database's (`everruns doctor`).

Revision ID: 0012
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0008"


def upgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.add_column(sa.Column("version", sa.String(64), nullable=True))
        batch.add_column(sa.Column("clock_skew", sa.Float, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("clock_skew")
        batch.drop_column("version")
