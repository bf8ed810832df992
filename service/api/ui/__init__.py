"""The web UI served by the API at ``/ui`` (server-rendered templates, packaged assets)."""

from __future__ import annotations

from fastapi import FastAPI


def install_ui(app: FastAPI) -> None:
    """Mounts the UI's pages and assets on ``app`` (being built)."""
