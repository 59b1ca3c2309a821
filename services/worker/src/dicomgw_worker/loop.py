"""The embedded worker: an in-process loop over the same outbox the Celery relay drains in production."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from dicomgw import outbox
from dicomgw.runtime import Runtime
from dicomgw_worker.verify import verify_instance

log = logging.getLogger("dicomgw.worker")

HANDLERS = {"verify": verify_instance}


async def drain_once(runtime: Runtime, *, limit: int = 100) -> int:
    """Run every due outbox item once; returns how many were handled."""
    handled = 0
    for work in await outbox.due(runtime.index, limit=limit):
        handler = HANDLERS.get(work.task)
        try:
            if handler is None:
                raise LookupError(f"no handler for task {work.task!r}")
            await handler(runtime, work.key)
        except Exception:
            log.exception("background task failed; retrying later", extra={"task": work.task})
            await outbox.retry_later(runtime.index, work)
        else:
            await outbox.done(runtime.index, work)
            handled += 1
    return handled


async def _run(runtime: Runtime) -> None:
    while True:
        try:
            handled = await drain_once(runtime)
        except Exception:
            log.exception("worker loop error")
            handled = 0
        if not handled:
            await asyncio.sleep(runtime.settings.worker.poll_seconds)


@contextlib.asynccontextmanager
async def embedded_worker(runtime: Runtime) -> AsyncIterator[None]:
    task = asyncio.create_task(_run(runtime), name="dicomgw-embedded-worker")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
