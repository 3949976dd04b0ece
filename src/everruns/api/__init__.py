"""The HTTP API (FastAPI), with Server-Sent Events for live runs."""

from everruns.api.app import ApiConfig, create_app

__all__ = ["ApiConfig", "create_app"]
