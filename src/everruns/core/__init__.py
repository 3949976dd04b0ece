"""The pure core: the journal's vocabulary, the fold, decide, the runs-row projection and
the other pure policies (back-off, context selection, schedule math).

Nothing in this package does I/O or imports a database, network or process library
(tests/core/test_purity.py imports it with those blocked). It imports only itself,
`everruns.spec` and `everruns.errors`. This `__init__` imports nothing, so that
`everruns.spec` can use `everruns.core.schedule` without an import cycle.
"""
