"""The Celery tier: verify/replicate/repair tasks over Redis, routed in one table, with beat sweeps.

Messages carry ids, never payloads: a batch of (outbox id, SOP Instance UID). A task removes an outbox
row only when its work succeeded, so a message lost with Redis, or a worker killed mid-task, leaves the
row to be offered again by the relay once its lease runs out (DESIGN invariant 4).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from celery import Celery, Task
from celery.signals import worker_init, worker_process_init, worker_process_shutdown

from dicomgw import outbox
from dicomgw.config import Settings
from dicomgw.runtime import Runtime, open_runtime
from dicomgw_worker import metrics
from dicomgw_worker.tasks import orphan_sweep, run_batch, sweep

log = logging.getLogger("dicomgw.worker")

# One routing table: every task the app defines must appear here (a test checks it).
TASK_ROUTES: dict[str, dict[str, str]] = {
    "dicomgw.verify": {"queue": "verify"},
    "dicomgw.replicate": {"queue": "replicate"},
    "dicomgw.repair": {"queue": "replicate"},
    # compaction is CPU-bound: a queue of its own, so that an operator can give it its own workers
    "dicomgw.compact": {"queue": "compact"},
    "dicomgw.drop_verbatim": {"queue": "compact"},
    "dicomgw.tier_cold": {"queue": "compact"},
    "dicomgw.drop_hot": {"queue": "compact"},
    "dicomgw.sweep": {"queue": "verify"},
    "dicomgw.import_study": {"queue": "import"},
    # research collections: long steps of their own, so that an operator can give them other workers
    "dicomgw.collect": {"queue": "collect"},
    # a listing of whole buckets, for as long as it takes: a queue of its own for the same reason
    "dicomgw.orphan_sweep": {"queue": "orphans"},
}
QUEUES = sorted({route["queue"] for route in TASK_ROUTES.values()})


def make_celery(settings: Settings | None = None) -> Celery:
    settings = settings or Settings()
    app = Celery("dicomgw", broker=settings.worker.broker_url)
    beat_schedule: dict[str, dict[str, Any]] = {
        "sweep": {"task": "dicomgw.sweep", "schedule": settings.worker.sweep_seconds},
    }
    if settings.worker.orphan_sweep_seconds > 0:
        beat_schedule["orphan-sweep"] = {"task": "dicomgw.orphan_sweep",
                                         "schedule": settings.worker.orphan_sweep_seconds}
    # An orphan sweep lists whole buckets: it may take up to its interval, not a task's usual limits.
    orphan_limit = max(settings.worker.task_soft_time_limit, settings.worker.orphan_sweep_seconds)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_backend=None,
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_routes=TASK_ROUTES,
        task_default_queue="verify",
        task_soft_time_limit=settings.worker.task_soft_time_limit,
        task_time_limit=settings.worker.task_time_limit,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": int(settings.worker.lease_seconds) * 2},
        beat_schedule=beat_schedule,
        task_annotations={"dicomgw.orphan_sweep": {"soft_time_limit": orphan_limit,
                                                   "time_limit": orphan_limit + 300}},
        worker_concurrency=settings.worker.concurrency,
        worker_hijack_root_logger=False,
    )
    return app


celery = make_celery()


class _ProcessRuntime:
    """One event loop and one Runtime per worker process, opened when the process starts."""

    loop: asyncio.AbstractEventLoop | None = None
    runtime: Runtime | None = None
    _context: Any = None

    @classmethod
    def start(cls) -> None:
        cls.loop = asyncio.new_event_loop()
        cls._context = open_runtime(Settings(), migrate=False)
        cls.runtime = cls.loop.run_until_complete(cls._context.__aenter__())

    @classmethod
    def stop(cls) -> None:
        if cls.loop is not None and cls._context is not None:
            cls.loop.run_until_complete(cls._context.__aexit__(None, None, None))
            cls.loop.close()
        cls.loop = cls.runtime = cls._context = None

    @classmethod
    def current(cls) -> Runtime:
        """This process's runtime, opened now if the process started without one."""
        if cls.runtime is None:
            cls.start()
        assert cls.runtime is not None
        return cls.runtime

    @classmethod
    def run(cls, coro: Any) -> Any:
        if cls.loop is None:
            cls.start()
        assert cls.loop is not None
        return cls.loop.run_until_complete(coro)


worker_process_init.connect(lambda **_: _ProcessRuntime.start(), weak=False)


def _serve_metrics(**_: Any) -> None:
    """In the worker's main process: /metrics summing every pool process's counters."""
    import os

    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        return
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    start_http_server(Settings().worker.metrics_port, registry=registry)


worker_init.connect(_serve_metrics, weak=False)
worker_process_shutdown.connect(lambda **_: _ProcessRuntime.stop(), weak=False)


def _items(first: Any, key: str | None) -> list[tuple[int, str]]:
    """A message's outbox rows: ``[[id, key], ...]``, or one ``(id, key)`` as relays before batches
    sent it (still queued during a rolling upgrade)."""
    if key is not None:
        return [(int(first), key)]
    return [(int(outbox_id), str(k)) for outbox_id, k in first]


def _run_outbox_batch(task: Task, name: str, first: Any, key: str | None) -> str:
    """Run one message's outbox rows together (``run_batch``); the done ones leave the outbox in one
    statement, and only the failed ones are retried, with backoff."""
    items = _items(first, key)

    async def _go() -> dict[str, str | BaseException]:
        runtime = _ProcessRuntime.runtime
        assert runtime is not None
        outcomes = await run_batch(runtime, name, [k for _, k in items])
        done = [outbox.Work(i, name, k, 0) for i, k in items if not isinstance(outcomes[k], BaseException)]
        if done:
            await outbox.done_many(runtime.index, done)
        return outcomes

    try:
        outcomes = _ProcessRuntime.run(_go())
    except Exception as exc:  # the index away: the whole message again
        metrics.task_outcomes.labels(task=name, outcome="error").inc(len(items))
        raise task.retry(exc=exc, countdown=_backoff(task), max_retries=12) from exc
    failed = [[i, k] for i, k in items if isinstance(outcomes[k], BaseException)]
    for _, k in items:
        outcome = outcomes[k]
        metrics.task_outcomes.labels(
            task=name, outcome="error" if isinstance(outcome, BaseException) else outcome).inc()
    if failed:
        error = outcomes[failed[0][1]]
        assert isinstance(error, BaseException)
        log.warning("%d of %d %s rows failed; retrying them: %r", len(failed), len(items), name, error)
        # exponential backoff, capped; the outbox lease is the backstop if retries run out
        raise task.retry(args=[failed], kwargs={}, exc=error, countdown=_backoff(task), max_retries=12)
    return f"{len(items)} done"


def _backoff(task: Task) -> int:
    return min(600, 2 ** min(task.request.retries + 1, 10))


@celery.task(name="dicomgw.verify", bind=True)
def verify_task(self: Task, items: Any, key: str | None = None) -> str:
    return _run_outbox_batch(self, "verify", items, key)


@celery.task(name="dicomgw.replicate", bind=True)
def replicate_task(self: Task, items: Any, key: str | None = None) -> str:
    return _run_outbox_batch(self, "replicate", items, key)


@celery.task(name="dicomgw.repair", bind=True)
def repair_task(self: Task, items: Any, key: str | None = None) -> str:
    return _run_outbox_batch(self, "repair", items, key)


@celery.task(name="dicomgw.compact", bind=True)
def compact_task(self: Task, items: Any, key: str | None = None) -> str:
    """Originals kept in their compact form from now on (dicomgw_worker.compaction)."""
    return _run_outbox_batch(self, "compact", items, key)


@celery.task(name="dicomgw.drop_verbatim", bind=True)
def drop_verbatim_task(self: Task, items: Any, key: str | None = None) -> str:
    return _run_outbox_batch(self, "drop-verbatim", items, key)


@celery.task(name="dicomgw.tier_cold", bind=True)
def tier_cold_task(self: Task, items: Any, key: str | None = None) -> str:
    """Originals moved to the cold tier (dicomgw_worker.tiering)."""
    return _run_outbox_batch(self, "tier-cold", items, key)


@celery.task(name="dicomgw.drop_hot", bind=True)
def drop_hot_task(self: Task, items: Any, key: str | None = None) -> str:
    return _run_outbox_batch(self, "drop-hot", items, key)


@celery.task(name="dicomgw.collect", bind=True)
def collect_task(self: Task, items: Any, key: str | None = None) -> str:
    """Bounded steps of building research collections (dicomgw.collections.builder)."""
    return _run_outbox_batch(self, "collect", items, key)


@celery.task(name="dicomgw.import_study", bind=True, acks_late=True)
def import_study_task(self: Task, orthanc_url: str, study_id: str, gateway_url: str,
                      auth: list[str] | None = None, token: str | None = None) -> dict[str, int]:
    """Backfill one study from a PACS (idempotent: instances the gateway holds are skipped).

    ``auth`` (Orthanc's) and ``token`` (the gateway's) travel in the task like the rest of its
    arguments: the broker is inside the deployment's trust boundary."""
    from dicomgw.pacs_import import ImportTally, import_study

    tally = ImportTally(studies=1)

    async def go() -> None:
        await import_study(orthanc_url, tuple(auth) if auth else None, gateway_url, study_id, tally,
                           asyncio.Semaphore(1), token)

    try:
        _ProcessRuntime.run(go())
    except Exception as exc:
        metrics.task_outcomes.labels(task="import", outcome="error").inc()
        raise self.retry(exc=exc, countdown=min(600, 2 ** min(self.request.retries + 1, 10)),
                         max_retries=8) from exc
    metrics.task_outcomes.labels(task="import", outcome="imported" if tally.imported else "present").inc()
    return {"instances": tally.instances, "failed": tally.failed}


@celery.task(name="dicomgw.sweep")
def sweep_task() -> dict[str, int]:
    result: dict[str, int] = _ProcessRuntime.run(sweep(_ProcessRuntime.current()))
    return result


# Acknowledged on receipt, unlike the outbox tasks: a run may outlast the broker's visibility timeout,
# and redelivered it would run twice at once (harmless, but twice the listing); a run lost with its
# worker is simply the next one that beat sends.
@celery.task(name="dicomgw.orphan_sweep", acks_late=False)
def orphan_sweep_task() -> dict[str, int]:
    """Index or remove the originals no index row references (dicomgw.orphans)."""
    try:
        report = _ProcessRuntime.run(orphan_sweep(_ProcessRuntime.current()))
    except Exception:
        metrics.task_outcomes.labels(task="orphan-sweep", outcome="error").inc()
        raise
    metrics.task_outcomes.labels(task="orphan-sweep",
                                 outcome="complete" if report.complete else "partial").inc()
    summary: dict[str, int] = report.summary()
    return summary
