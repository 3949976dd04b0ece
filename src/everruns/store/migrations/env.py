"""Alembic environment: runs on a connection handed over by everruns.store.database."""

from alembic import context

from everruns.store.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
