"""The outbox relay: hands due outbox rows to Celery and leases them; never deletes one itself.

If Redis is down, publishing fails, the rows stay due, and they go out when Redis is back: a Redis
outage delays background work but neither fails ingest nor drops work.

Back-pressure: a row is published only while its queue holds fewer than
``DICOMGW_WORKER_RELAY_QUEUE_LIMIT`` messages. Without it, a backlog longer than the lease made the
relay publish every waiting row again at each lease's end: the chaos soak saw 15,000 messages queued
for 3,800 rows, the workers busy with duplicates, and the replica an hour behind. Rows left out stay
due in the outbox (the durable queue) and go out as the workers catch up.
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


def queue_depths(celery: Celery, queues: set[str]) -> dict[str, int]:
    """Messages waiting in each queue, as the broker counts them (a queue not declared yet, before
    any worker or publisher has, holds none)."""
    from kombu.exceptions import ChannelError

    depths = {}
    with celery.connection_for_write() as connection:
        for queue in queues:
            try:
                ok = connection.default_channel.queue_declare(queue=queue, passive=True)
                depths[queue] = int(ok.message_count)
            except ChannelError:
                depths[queue] = 0
    return depths


async def relay_once(runtime: Runtime, celery: Celery, *, limit: int = 500) -> int:
    """Publish every due row once, while its queue has room; returns how many were published."""
    from dicomgw_worker.celery_app import TASK_ROUTES

    lease = timedelta(seconds=runtime.settings.worker.lease_seconds)
    room_limit = runtime.settings.worker.relay_queue_limit
    published = 0
    rows = await outbox.due(runtime.index, limit=limit)
    queues = {TASK_ROUTES[TASK_NAMES[w.task]]["queue"] for w in rows if w.task in TASK_NAMES}
    try:
        depth = await asyncio.to_thread(queue_depths, celery, queues) if queues else {}
    except Exception as exc:
        log.warning("broker unavailable; outbox rows wait: %s", type(exc).__name__)
        return 0
    for work in rows:
        name = TASK_NAMES.get(work.task)
        if name is None:
            log.error("outbox row with an unknown task", extra={"task": work.task})
            await outbox.retry_later(runtime.index, work)
            continue
        queue = TASK_ROUTES[name]["queue"]
        if depth.get(queue, 0) >= room_limit:
            continue  # stays due: published once the workers have taken what is queued
        depth[queue] = depth.get(queue, 0) + 1
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
