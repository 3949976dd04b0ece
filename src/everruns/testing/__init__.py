"""Test your own agent the way the engine is tested: crash it at every boundary,
inject provider faults, replay recorded runs. See docs/testing.md.

Importing this package does not import pytest; the fixtures live in
`everruns.testing.plugin`, registered as a pytest plugin by the entry point.
"""

from everruns.providers.base import ProviderError
from everruns.providers.python import ModelRequest, ModelResponse, ToolCall
from everruns.testing.diff import diff_runs
from everruns.testing.effects import record_effect
from everruns.testing.faults import Retry, RunReport, faults
from everruns.testing.journalfile import JournalFileError, Recording, export_run, import_run
from everruns.testing.matrix import (
    CaseResult,
    CrashMatrixError,
    CrashReport,
    acrash_matrix,
    assert_exactly_once,
    crash_matrix,
)
from everruns.testing.replay import Divergence, ReplayReport, arecord, areplay, record, replay
from everruns.testing.runs import arun_agent, run_agent

__all__ = [
    "CaseResult",
    "CrashMatrixError",
    "CrashReport",
    "Divergence",
    "JournalFileError",
    "ModelRequest",
    "ModelResponse",
    "ProviderError",
    "Recording",
    "ReplayReport",
    "Retry",
    "RunReport",
    "ToolCall",
    "acrash_matrix",
    "arecord",
    "areplay",
    "arun_agent",
    "assert_exactly_once",
    "crash_matrix",
    "diff_runs",
    "export_run",
    "faults",
    "import_run",
    "record",
    "record_effect",
    "replay",
    "run_agent",
]
