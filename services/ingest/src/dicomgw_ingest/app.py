"""The ingest service on its own: STOW-RS over the shared runtime."""

from __future__ import annotations

from fastapi import FastAPI

from dicomgw.config import Settings
from dicomgw.web.app import build_app
from dicomgw_ingest.routes import router


def create_app(settings: Settings | None = None) -> FastAPI:
    return build_app(settings or Settings(), [router], service="ingest",
                     title="dicomgw ingest (STOW-RS)")
