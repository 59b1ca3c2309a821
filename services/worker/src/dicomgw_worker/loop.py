"""The embedded worker: an in-process loop over the same outbox the Celery relay drains in production."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from dicomgw import outbox
from dicomgw.background import running
from dicomgw.runtime import Runtime
from dicomgw_worker import metrics
from dicomgw_worker.tasks import HANDLERS, orphan_sweep, sweep, verify_many

log = logging.getLogger("dicomgw.worker")


async def run_task(runtime: Runtime, work: outbox.Work) -> bool:
    """Run one outbox item; done items leave the outbox, failed ones come back later."""
    handler = HANDLERS.get(work.task)
    try:
        if handler is None:
            raise LookupError(f"no handler for task {work.task!r}")
        outcome = await handler(runtime, work.key)
    except Exception:
        log.exception("background task failed; retrying later", extra={"task": work.task})
        metrics.task_outcomes.labels(task=work.task, outcome="error").inc()
        await outbox.retry_later(runtime.index, work)
        return False
    metrics.task_outcomes.labels(task=work.task, outcome=str(outcome)).inc()
    await outbox.done(runtime.index, work)
    return True


async def drain_once(runtime: Runtime, *, limit: int = 100) -> int:
    """Run every due outbox item once; returns how many were handled.

    The due verifications run together (``verify_many``: one transaction for all of them); should
    that fail, each is run and retried on its own.
    """
    due = await outbox.due(runtime.index, limit=limit)
    verifications = [work for work in due if work.task == "verify"]
    handled = 0
    if len(verifications) > 1:
        try:
            outcomes = await verify_many(runtime, [work.key for work in verifications])
        except Exception:
            log.exception("verifying a batch failed; verifying one by one")
        else:
            for work in verifications:
                metrics.task_outcomes.labels(task="verify", outcome=outcomes[work.key]).inc()
            await outbox.done_many(runtime.index, verifications)
            handled = len(verifications)
            due = [work for work in due if work.task != "verify"]
    for work in due:
        handled += await run_task(runtime, work)
    return handled


async def _run(runtime: Runtime) -> None:
    last_sweep = 0.0
    while True:
        try:
            if time.monotonic() - last_sweep > runtime.settings.worker.sweep_seconds:
                await sweep(runtime)
                last_sweep = time.monotonic()
            handled = await drain_once(runtime)
        except Exception:
            log.exception("worker loop error")
            handled = 0
        if not handled:
            await asyncio.sleep(runtime.settings.worker.poll_seconds)


# the first orphan sweep waits at most this long after start (a restart every day still sweeps)
FIRST_ORPHAN_SWEEP_SECONDS = 600.0


async def _orphans(runtime: Runtime) -> None:
    """The orphan sweep, beside the outbox loop: a long listing never holds up verifications."""
    interval = runtime.settings.worker.orphan_sweep_seconds
    if interval <= 0:
        return
    await asyncio.sleep(min(interval, FIRST_ORPHAN_SWEEP_SECONDS))
    while True:
        try:
            await orphan_sweep(runtime)
        except Exception:
            log.exception("orphan sweep failed; trying again at the next interval")
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def embedded_worker(runtime: Runtime) -> AsyncIterator[None]:
    async with (running(_run(runtime), "dicomgw-embedded-worker"),
                running(_orphans(runtime), "dicomgw-orphan-sweep")):
        yield
