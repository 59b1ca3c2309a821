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
from dicomgw_worker.tasks import orphan_sweep, run_batch, sweep

log = logging.getLogger("dicomgw.worker")


async def drain_once(runtime: Runtime, *, limit: int = 100) -> int:
    """Run every due outbox item once, each task's items together (``run_batch``: one index read and
    one commit for a batch of verifications or replications); returns how many were done. Done items
    leave the outbox in one statement; a failed one comes back later, on its own backoff."""
    by_task: dict[str, list[outbox.Work]] = {}
    for work in await outbox.due(runtime.index, limit=limit):
        by_task.setdefault(work.task, []).append(work)
    handled = 0
    for task, works in by_task.items():
        outcomes = await run_batch(runtime, task, [work.key for work in works])
        done = []
        for work in works:
            outcome = outcomes[work.key]
            if isinstance(outcome, BaseException):
                log.error("background task failed; retrying later", exc_info=outcome, extra={"task": task})
                metrics.task_outcomes.labels(task=task, outcome="error").inc()
                await outbox.retry_later(runtime.index, work)
            else:
                metrics.task_outcomes.labels(task=task, outcome=str(outcome)).inc()
                done.append(work)
        if done:
            await outbox.done_many(runtime.index, done)
        handled += len(done)
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
