"""The `everruns` command line (entry point `everruns.cli:main`).

Layout: `app.py` registers every command; the commands live by concept (`runs.py`,
`serve.py`, `access.py`, `schedules.py`, `maintenance.py`); the run commands are written
once against `backend.Backend`, which `local.py` (the database) and `remote.py` (an
`everruns server`, via `AsyncClient`) implement; `common.py` holds the options and the
one error-to-exit-code funnel.
"""

from everruns.cli.app import app, main
from everruns.cli.common import load_checked

__all__ = ["app", "load_checked", "main"]
