"""The outbox relay: hands due outbox rows to Celery and leases them; never deletes one itself.

If Redis is down, publishing fails, the rows stay due, and they go out when Redis is back: a Redis
outage delays background work but neither fails ingest nor drops work.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from celery import Celery
from sqlalchemy import update

from dicomgw import outbox
from dicomgw.index.models import OutboxItem
from dicomgw.runtime import Runtime

log = logging.getLogger("dicomgw.relay")

TASK_NAMES = {"verify": "dicomgw.verify", "replicate": "dicomgw.replicate", "repair": "dicomgw.repair",
              "collect": "dicomgw.collect"}


async def relay_once(runtime: Runtime, celery: Celery, *, limit: int = 500) -> int:
    """Publish every due row once; returns how many were published."""
    lease = timedelta(seconds=runtime.settings.worker.lease_seconds)
    published = 0
    for work in await outbox.due(runtime.index, limit=limit):
        name = TASK_NAMES.get(work.task)
        if name is None:
            log.error("outbox row with an unknown task", extra={"task": work.task})
            await outbox.retry_later(runtime.index, work)
            continue
        try:
            await asyncio.to_thread(celery.send_task, name, args=[work.id, work.key],
                                    retry=False)
        except Exception as exc:
            log.warning("broker unavailable; outbox rows wait: %s", type(exc).__name__)
            return published
        async with runtime.index.sessions.begin() as session:
            await session.execute(
                update(OutboxItem).where(OutboxItem.id == work.id)
                .values(available_at=datetime.now(UTC) + lease)
            )
        published += 1
    return published


async def run_relay(runtime: Runtime, celery: Celery) -> None:
    heartbeat = runtime.settings.data_dir / "relay.alive"  # read by `dicomgw-worker alive relay`
    while True:
        heartbeat.touch()
        try:
            published = await relay_once(runtime, celery)
        except Exception:
            log.exception("relay error")
            published = 0
        if not published:
            await asyncio.sleep(runtime.settings.worker.poll_seconds)
