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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dicomgw-worker")
    parser.add_argument("role", choices=["worker", "beat", "relay"])
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="more arguments for celery")
    args = parser.parse_args(argv)
    from dicomgw.logs import configure_logging

    configure_logging("info")
    if args.role == "relay":
        return _relay()
    from dicomgw_worker.celery_app import QUEUES, celery

    if args.role == "worker":
        celery.worker_main(["worker", "-Q", ",".join(QUEUES), "--loglevel=INFO", *args.extra])
    else:
        celery.start(["beat", "--loglevel=INFO", *args.extra])
    return 0


if __name__ == "__main__":
    sys.exit(main())
