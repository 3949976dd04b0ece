"""The HTTP API (FastAPI), with Server-Sent Events for live runs.

`create_app` and `ApiConfig` are loaded on first use, so that `everruns.api.wire`
(the run object's format, used by the CLI) can be imported without FastAPI.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from everruns.api.app import ApiConfig, create_app

__all__ = ["ApiConfig", "create_app"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("everruns.api.app"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
