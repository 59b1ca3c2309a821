"""A watchdog in the Celery worker's main process: a worker that has stopped consuming exits.

Celery with the Redis transport can stop taking messages after a broker connection reset and never
recover (celery/celery#10205 and #10302, still open for Celery 5.6; the chaos soak reproduces it here
with Celery 5.7 within seconds of Redis resetting connections): the process lives on, its queues
fill, and nothing is verified or replicated until somebody restarts it. The watchdog notices the
state — messages waiting in the worker's queues, a free slot in its pool, and no message taken for
``DICOMGW_WORKER_STALL_SECONDS`` — and ends the worker (with its pool) so that its supervisor starts
it again, as a Kubernetes liveness probe would. Tasks are acknowledged late, so a task that was
running is delivered again; nothing is lost.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any

from celery.signals import task_received, worker_ready

log = logging.getLogger("dicomgw.worker.watchdog")


class Watchdog:
    def __init__(self, broker_url: str, queues: list[str], concurrency: int, stall_seconds: float) -> None:
        self.broker_url = broker_url
        self.queues = queues
        self.concurrency = concurrency
        self.stall_seconds = stall_seconds
        self.last_taken = time.monotonic()

    def taken(self, **_: Any) -> None:
        self.last_taken = time.monotonic()

    def waiting(self) -> int | None:
        """Messages waiting in the worker's queues (None: the broker cannot say now)."""
        import redis

        try:
            client = redis.Redis.from_url(self.broker_url, socket_timeout=5, socket_connect_timeout=5)
            try:
                return sum(int(client.llen(queue)) for queue in self.queues)
            finally:
                client.close()
        except redis.RedisError:
            return None  # the broker is away: not the worker's fault, and nothing to take anyway

    def stalled(self, busy: int, waiting: int | None, now: float) -> bool:
        """True when work waits, a slot is free, and nothing was taken for stall_seconds."""
        if busy >= self.concurrency or not waiting:
            self.last_taken = now  # nothing to take, or no room to take it: not a stall
            return False
        return now - self.last_taken > self.stall_seconds

    def run(self) -> None:
        from celery.worker import state

        period = max(1.0, self.stall_seconds / 4)
        while True:
            time.sleep(period)
            if self.stalled(len(state.active_requests), self.waiting(), time.monotonic()):
                log.critical("the worker has stopped taking work (%s s with messages waiting and a free "
                             "slot): exiting so that its supervisor restarts it", self.stall_seconds)
                end_worker()


def end_worker() -> None:
    """SIGKILL the worker and its pool (its own process group when it leads one, as under
    supervisord or in a container); unacknowledged tasks go back to the queue."""
    if os.getpgrp() == os.getpid():
        os.killpg(os.getpgrp(), signal.SIGKILL)
    os._exit(70)


def install(broker_url: str, queues: list[str], concurrency: int, stall_seconds: float) -> None:
    """Start the watchdog when the worker is ready (call before the worker starts)."""
    if stall_seconds <= 0 or not broker_url.startswith(("redis://", "rediss://")):
        return
    dog = Watchdog(broker_url, queues, concurrency, stall_seconds)

    def ready(sender: Any = None, **_: Any) -> None:
        # the queues this worker consumes (an operator may have narrowed them with -Q)
        consumed = getattr(getattr(sender, "task_consumer", None), "queues", None)
        if consumed:
            dog.queues = [queue.name for queue in consumed]
        pool = getattr(getattr(sender, "controller", None), "concurrency", None)
        if isinstance(pool, int) and pool > 0:
            dog.concurrency = pool
        threading.Thread(target=dog.run, name="stall-watchdog", daemon=True).start()

    task_received.connect(dog.taken, weak=False)
    worker_ready.connect(ready, weak=False)
