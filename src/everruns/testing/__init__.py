"""Test your own agent the way the engine is tested: crash it at every boundary,
inject provider faults, replay recorded runs. See docs/testing.md.

Importing this package does not import pytest; the fixtures live in
`everruns.testing.plugin`, registered as a pytest plugin by the entry point.
"""

from everruns.providers.base import ProviderError
from everruns.providers.python import ModelRequest, ModelResponse, ToolCall
from everruns.testing.effects import record_effect
from everruns.testing.matrix import (
    CaseResult,
    CrashMatrixError,
    CrashReport,
    acrash_matrix,
    assert_exactly_once,
    crash_matrix,
)

__all__ = [
    "CaseResult",
    "CrashMatrixError",
    "CrashReport",
    "ModelRequest",
    "ModelResponse",
    "ProviderError",
    "ToolCall",
    "acrash_matrix",
    "assert_exactly_once",
    "crash_matrix",
    "record_effect",
]
