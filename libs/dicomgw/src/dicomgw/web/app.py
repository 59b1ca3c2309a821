"""Builds a FastAPI app from service routers around one Runtime: lifespan, CORS, problem+json."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import APIRouter, FastAPI
from starlette.middleware.cors import CORSMiddleware

from dicomgw.config import Settings
from dicomgw.logs import configure_logging
from dicomgw.metrics import MetricsMiddleware
from dicomgw.runtime import Runtime, open_runtime
from dicomgw.web.admin import router as admin_router
from dicomgw.web.audit import audit_middleware
from dicomgw.web.collections import router as collections_router
from dicomgw.web.problems import install_problem_handlers

Extra = Callable[[Runtime], AbstractAsyncContextManager[None]]


def build_app(
    settings: Settings,
    routers: Sequence[APIRouter],
    *,
    title: str,
    service: str = "gateway",
    background: Sequence[Extra] = (),
) -> FastAPI:
    """One app: routers mounted under the DICOMweb base path, sharing one Runtime.

    ``background`` context managers run beside the app for its lifetime (the embedded worker loop).
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(settings.log_level)
        async with open_runtime(settings, migrate=settings.index.migrate) as runtime:
            app.state.runtime = runtime
            managers = [runtime.audit.running(), *(make(runtime) for make in background)]
            for manager in managers:
                await manager.__aenter__()
            try:
                yield
            finally:
                for manager in reversed(managers):
                    await manager.__aexit__(None, None, None)

    app = FastAPI(title=title, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.settings = settings
    for router in routers:
        app.include_router(router, prefix=settings.http.base_path)
        # the same routes in every other partition (dicomgw.partitions)
        app.include_router(router, prefix=f"{settings.http.base_path}/partitions/{{partition}}",
                           include_in_schema=False)
    app.include_router(admin_router)
    app.include_router(collections_router)
    install_problem_handlers(app)
    app.add_middleware(MetricsMiddleware, service=service)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.http.cors_origins,
        allow_methods=["GET", "POST", "DELETE", "OPTIONS", "HEAD"],
        allow_headers=["Authorization", "Accept", "Content-Type", "Range", "X-Requested-With"],
        expose_headers=["Content-Type", "Content-Length", "Warning", "Location"],
        max_age=settings.http.cors_max_age,
    )

    app.middleware("http")(audit_middleware)

    @app.middleware("http")
    async def cross_origin_resource_policy(request, call_next):  # type: ignore[no-untyped-def]
        response = await call_next(request)
        response.headers.setdefault("Cross-Origin-Resource-Policy", "cross-origin")
        return response

    return app
