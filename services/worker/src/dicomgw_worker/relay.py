"""The outbox relay: hands due outbox rows to Celery and leases them; never deletes one itself.

If Redis is down, publishing fails, the rows stay due, and they go out when Redis is back: a Redis
outage delays background work but neither fails ingest nor drops work.

Batches: the verifications and replications that are due travel ``DICOMGW_WORKER_BATCH_SIZE`` rows to a
message and run together (``tasks.run_batch``).

Back-pressure: rows are published only while their queue holds fewer than
``DICOMGW_WORKER_RELAY_QUEUE_LIMIT`` rows (a queued message counted as a whole batch). Without it, a
backlog longer than the lease made the relay publish every waiting row again at each lease's end: the
chaos soak saw 15,000 messages queued for 3,800 rows, the workers busy with duplicates, and the replica
an hour behind. Rows left out stay due in the outbox (the durable queue) and go out as the workers
catch up.
"""

from __future__ import annotations

import asyncio
import logging

from celery import Celery

from dicomgw import outbox
from dicomgw.runtime import Runtime

log = logging.getLogger("dicomgw.relay")

TASK_NAMES = {"verify": "dicomgw.verify", "replicate": "dicomgw.replicate", "repair": "dicomgw.repair",
              "collect": "dicomgw.collect", "compact": "dicomgw.compact",
              "drop-verbatim": "dicomgw.drop_verbatim", "tier-cold": "dicomgw.tier_cold",
              "drop-hot": "dicomgw.drop_hot"}


# Integrity work (verify, replicate, repair) comes before the saving of space (compaction, tiers,
# drops): rows of the later queues are published only while no integrity work is queued or due. In
# the chaos soak, compaction sharing the two worker slots as equals held the replica's catch-up
# after a fault from about 75 s to about 175 s.
INTEGRITY_QUEUES = frozenset({"verify", "replicate"})
LATER_QUEUES = frozenset({"compact"})
# tasks whose rows each take long (a repair copies; a collection step is bounded by time): a message
# each, so that a batch never outlasts the lease; the others travel DICOMGW_WORKER_BATCH_SIZE together
ONE_PER_MESSAGE = frozenset({"repair", "collect"})


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
    """Publish due rows in batches (``batch_size`` rows per message, but ONE_PER_MESSAGE), while their
    queue has room and, for LATER_QUEUES, no integrity work waits; returns how many rows were
    published. A queue without room costs no index read.

    The rows published are leased in one UPDATE at the end: a relay killed before it re-publishes
    them at its next poll, which the idempotent tasks make harmless.
    """
    from dicomgw_worker.celery_app import TASK_ROUTES

    worker = runtime.settings.worker
    queue_of = {task: TASK_ROUTES[name]["queue"] for task, name in TASK_NAMES.items()}
    try:
        depth = await asyncio.to_thread(queue_depths, celery, set(queue_of.values()))
    except Exception as exc:
        log.warning("broker unavailable; outbox rows wait: %s", type(exc).__name__)
        return 0
    # rows each queue may still take; a queued message counts as a whole batch
    room = {queue: worker.relay_queue_limit - n * worker.batch_size for queue, n in depth.items()}
    if any(depth.get(queue, 0) for queue in INTEGRITY_QUEUES):
        for queue in LATER_QUEUES:  # the workers have integrity work waiting: that first
            room[queue] = 0
    open_tasks = [task for task, queue in queue_of.items() if room[queue] > 0]
    if not open_tasks:
        return 0
    by_task: dict[str, list[outbox.Work]] = {}
    for work in await outbox.due(runtime.index, limit=limit, tasks=open_tasks):
        by_task.setdefault(work.task, []).append(work)
    if any(queue_of[task] in INTEGRITY_QUEUES for task in by_task):
        by_task = {task: works for task, works in by_task.items() if queue_of[task] not in LATER_QUEUES}
    published: list[int] = []
    try:
        for task, works in by_task.items():
            queue, size = queue_of[task], 1 if task in ONE_PER_MESSAGE else worker.batch_size
            for start in range(0, len(works), size):
                if room[queue] <= 0:
                    break  # the rest stay due: published once the workers have taken what is queued
                batch = works[start:start + min(size, room[queue])]
                await asyncio.to_thread(celery.send_task, TASK_NAMES[task],
                                        args=[[[w.id, w.key] for w in batch]], retry=False)
                room[queue] -= worker.batch_size
                published += [w.id for w in batch]
    except Exception as exc:
        log.warning("broker unavailable; outbox rows wait: %s", type(exc).__name__)
    await outbox.lease(runtime.index, published, worker.lease_seconds)
    return len(published)


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
