"""The embedded gateway: STOW-RS, QIDO-RS and WADO-RS in one process with the background loop."""

from __future__ import annotations

from fastapi import FastAPI

from dicomgw.config import Settings
from dicomgw.web.app import build_app
from dicomgw_dimse.scp import dimse_front_door
from dicomgw_ingest.routes import router as ingest_router
from dicomgw_query.routes import router as query_router
from dicomgw_retrieve.routes import router as retrieve_router
from dicomgw_worker.loop import embedded_worker


def create_app(settings: Settings | None = None) -> FastAPI:
    return build_app(
        settings or Settings(),
        [ingest_router, query_router, retrieve_router],
        title="dicomgw (embedded)",
        background=[embedded_worker, dimse_front_door],
    )
