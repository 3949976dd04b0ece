"""Test tool for tests/tools/test_sandbox.py: what the worker process itself looks like."""

from __future__ import annotations

import ctypes
import os

from everruns import tool

PR_GET_DUMPABLE = 3


@tool
def worker_view(name: str) -> dict[str, object]:
    """Whether the worker's os.environ still holds `name`, and its dumpable flag.

    Args:
        name: an environment variable name
    """
    libc = ctypes.CDLL(None, use_errno=True)
    return {"in_environ": name in os.environ, "dumpable": libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0)}
