"""Builds a FastAPI app from service routers around one Runtime: lifespan, CORS, problem+json."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import APIRouter, FastAPI
from starlette.datastructures import MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dicomgw.background import in_one_process
from dicomgw.config import Settings
from dicomgw.logs import configure_logging
from dicomgw.metrics import MetricsMiddleware
from dicomgw.runtime import Runtime, open_runtime
from dicomgw.web.admin import router as admin_router
from dicomgw.web.audit import AuditMiddleware
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

    ``background`` context managers run beside the app for its lifetime (the embedded worker loop, the
    DIMSE listener), in one process of the server's processes.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(settings.log_level)
        # Blocking calls (fsync, file reads, DICOM parsing) run in the default executor; Python's
        # default of cpu+4 threads queued a STOW's parts behind each other's fsyncs on a 2-core machine.
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(32, "dicomgw-io"))
        async with open_runtime(settings, migrate=settings.index.migrate) as runtime:
            app.state.runtime = runtime
            work = (in_one_process(settings.data_dir / "background.lock",
                                   lambda: [make(runtime) for make in background])
                    if background else contextlib.nullcontext())
            async with runtime.audit.running(), work:
                yield

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

    app.add_middleware(AuditMiddleware)
    app.add_middleware(CrossOriginResourcePolicy)
    app.add_middleware(DrainUnreadBody)
    return app


class DrainUnreadBody:
    """An error answered before the request body was read (a 415, 401 or 400 on a STOW) first reads the
    rest of a small body.

    Behind a router that streams request bodies (nginx with ``proxy_request_buffering off``), an answer
    that comes before the router has taken the whole body from the client makes it close the client's
    connection after the answer, without a ``Connection: close``: the client's next request on that
    keep-alive connection failed with a disconnect (15 times in a loop of 300 refused STOWs, each
    followed by a GET). A body larger than DRAIN_BYTES, or one that does not arrive within
    DRAIN_SECONDS (a stalled sender, answered 408), is left: the connection then closes, as it should.
    """

    DRAIN_BYTES = 1 << 20
    DRAIN_SECONDS = 1.0

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        finished = False  # the whole body was received (or the client went away)

        async def tracking_receive() -> Message:
            nonlocal finished
            message = await receive()
            if message["type"] == "http.disconnect" or not message.get("more_body", False):
                finished = True
            return message

        async def draining_send(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] >= 400 and not finished:
                drained = 0
                deadline = asyncio.get_running_loop().time() + self.DRAIN_SECONDS
                with contextlib.suppress(TimeoutError):
                    while not finished and drained <= self.DRAIN_BYTES:
                        left = deadline - asyncio.get_running_loop().time()
                        drained += len((await asyncio.wait_for(tracking_receive(), left)).get("body", b""))
            await send(message)

        await self.app(scope, tracking_receive, draining_send)


class CrossOriginResourcePolicy:
    """Every response may be embedded cross-origin (OHIF served from elsewhere loads pixel data).

    Pure ASGI, like every middleware here: Starlette's BaseHTTPMiddleware copies each response body
    chunk through a memory stream and a task, which cost a whole-study retrieve a third of its speed.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_policy(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("Cross-Origin-Resource-Policy", "cross-origin")
            await send(message)

        await self.app(scope, receive, send_with_policy)
