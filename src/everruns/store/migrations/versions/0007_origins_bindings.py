"""Agent versions remember where their spec came from; secrets are bound to URLs.

Existing agent versions become "api" (the most restricted origin: their author is not
known) and existing secrets are bound to no URL until `everruns secret set --allow-url`.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"


def upgrade() -> None:
    with op.batch_alter_table("agents") as batch:
        batch.add_column(sa.Column("origin", sa.String(8), nullable=False, server_default="api"))
    with op.batch_alter_table("secrets") as batch:
        batch.add_column(sa.Column("allow_urls", sa.Text, nullable=False, server_default="[]"))


def downgrade() -> None:
    with op.batch_alter_table("secrets") as batch:
        batch.drop_column("allow_urls")
    with op.batch_alter_table("agents") as batch:
        batch.drop_column("origin")
