"""`python -m everruns.cli`."""

from everruns.cli.app import main

main()
