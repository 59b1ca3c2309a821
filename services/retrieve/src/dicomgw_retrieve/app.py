"""The retrieve service on its own: WADO-RS over the shared runtime."""

from __future__ import annotations

from fastapi import FastAPI

from dicomgw.config import Settings
from dicomgw.web.app import build_app
from dicomgw_retrieve.routes import router


def create_app(settings: Settings | None = None) -> FastAPI:
    return build_app(settings or Settings(), [router], service="retrieve",
                     title="dicomgw retrieve (WADO-RS)")
