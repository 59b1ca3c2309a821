"""`dicomgw-worker worker|beat|relay`: the processes of the background tier."""

from __future__ import annotations

import argparse
import asyncio
import sys


def _relay() -> int:
    from dicomgw.config import Settings
    from dicomgw.runtime import open_runtime
    from dicomgw_worker.celery_app import celery
    from dicomgw_worker.relay import run_relay

    async def main() -> None:
        async with open_runtime(Settings()) as runtime:
            await run_relay(runtime, celery)

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    return 0


def _prepare_metrics() -> None:
    """Celery's pool processes each count tasks; prometheus-client's multiprocess mode adds them up.

    Must run before prometheus_client is imported anywhere in this process.
    """
    import os
    import shutil

    from dicomgw.config import Settings

    folder = Settings().data_dir / "prometheus-worker"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)


def _migrate() -> int:
    from dicomgw.config import Settings
    from dicomgw.index.db import upgrade_sync

    upgrade_sync(Settings().index_url)
    return 0


def _alive(role: str) -> int:
    """Liveness of a background process, for Kubernetes exec probes (exit 0 = alive)."""
    import os
    import socket
    import time

    from dicomgw.config import Settings

    settings = Settings()
    if role == "relay":
        beat = settings.data_dir / "relay.alive"
        limit = max(60.0, settings.worker.poll_seconds * 10)
        return 0 if beat.exists() and time.time() - beat.stat().st_mtime < limit else 1
    if role == "beat":
        schedules = list(settings.data_dir.glob("celerybeat-schedule*"))
        # beat saves its schedule at least every 3 minutes
        return 0 if schedules and time.time() - max(p.stat().st_mtime for p in schedules) < 600 else 1
    from dicomgw_worker.celery_app import celery

    node = f"celery@{os.environ.get('HOSTNAME') or socket.gethostname()}"
    replies = celery.control.inspect(destination=[node], timeout=10).ping() or {}
    return 0 if node in replies else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dicomgw-worker")
    parser.add_argument("role", choices=["worker", "beat", "relay", "migrate", "alive"])
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="more arguments for celery")
    args = parser.parse_args(argv)
    from dicomgw.logs import configure_logging

    configure_logging("info")
    if args.role == "relay":
        return _relay()
    if args.role == "migrate":
        return _migrate()
    if args.role == "alive":
        return _alive(args.extra[0] if args.extra else "worker")
    if args.role == "worker":
        _prepare_metrics()
    from dicomgw_worker.celery_app import QUEUES, celery

    if args.role == "worker":
        from dicomgw.config import Settings
        from dicomgw_worker import watchdog

        worker = Settings().worker
        watchdog.install(worker.broker_url, QUEUES, worker.concurrency, worker.stall_seconds)
        celery.worker_main(["worker", "-Q", ",".join(QUEUES), "--loglevel=INFO", *args.extra])
    else:
        celery.start(["beat", "--loglevel=INFO", *args.extra])
    return 0


if __name__ == "__main__":
    sys.exit(main())
