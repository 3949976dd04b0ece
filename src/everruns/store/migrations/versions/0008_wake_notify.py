"""PostgreSQL: wake idle workers and reach a run's holder at once, from whatever wrote the row.

A trigger on `runs` sends `everruns_wake` (payload: run id) when a run becomes claimable
(inserted, released, or woken with no holder) and `everruns_control` (payload:
`lease_owner:run_id`) when a cancel or pause is requested for a leased run. Workers LISTEN on
both, so a new run is picked up and a cancel reaches the in-flight LLM call without waiting for
the next poll or lease renewal, whichever process (API, CLI, another worker) wrote the row.
SQLite has no cross-process notification; its workers poll briefly instead.

Revision ID: 0008
Revises: 0007
"""

from alembic import op

revision = "0008"
down_revision = "0007"

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
          OR (NEW.pause_requested AND NOT OLD.pause_requested)) THEN
    PERFORM pg_notify('everruns_control', NEW.lease_owner || ':' || NEW.id);
  END IF;
  RETURN NULL;
END
$$ LANGUAGE plpgsql
"""

TRIGGER = """
CREATE TRIGGER everruns_runs_notify
AFTER INSERT OR UPDATE OF wake_at, lease_owner, cancel_requested, pause_requested ON runs
FOR EACH ROW EXECUTE FUNCTION everruns_runs_notify()
"""


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(FUNCTION)
    op.execute(TRIGGER)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS everruns_runs_notify ON runs")
    op.execute("DROP FUNCTION IF EXISTS everruns_runs_notify()")
