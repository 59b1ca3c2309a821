"""The Celery tier over a real Redis: the relay hands outbox rows to workers that replicate and verify.

Services and worker share one data folder here (SQLite index, local primary and replica folders); the
full stack with MinIO and PostgreSQL is exercised by the distributed-tier tests.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.dicomdata import make_study, multipart_related
from tests.fixtures.gateway import free_port
from tests.fixtures.processes import BIN, serve_app, spawn, stop
from tests.fixtures.redis import RedisServer
from tests.polling import wait_for


def _statuses(data_dir: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(data_dir / "index.sqlite3") as db:
        return db.execute("select verify_status, replica_status from instances").fetchall()


@pytest.fixture
def tier(tmp_path: Path, redis_server: RedisServer) -> Iterator[dict[str, object]]:
    env = {
        "DATA_DIR": str(tmp_path / "data"),
        "DICOMGW_REPLICA_BACKEND": "local",
        "DICOMGW_WORKER_BROKER_URL": redis_server.url,
        "DICOMGW_WORKER_POLL_SECONDS": "0.2",
        "DICOMGW_WORKER_LEASE_SECONDS": "5",
    }
    port = free_port()
    ingest = serve_app("dicomgw_ingest.app", port, env, tmp_path / "ingest.log")
    relay = spawn([str(BIN / "dicomgw-worker"), "relay"], env, tmp_path / "relay.log")
    worker = spawn([str(BIN / "dicomgw-worker"), "worker", "--concurrency=1"], env,
                   tmp_path / "worker.log")
    procs = {"ingest": ingest, "relay": relay, "worker": worker}
    yield {"url": f"http://127.0.0.1:{port}/dicom-web", "data": tmp_path / "data", "env": env,
           "procs": procs, "tmp": tmp_path}
    for proc in procs.values():
        stop(proc)


def test_relay_and_workers_replicate_and_verify_every_original(tier) -> None:  # type: ignore[no-untyped-def]
    parts = make_study(1, 5)
    body, ct = multipart_related(parts)
    resp = httpx.post(f"{tier['url']}/studies", content=body, headers={"content-type": ct}, timeout=60)
    assert resp.status_code == 200, resp.text
    data: Path = tier["data"]
    wait_for(lambda: _statuses(data) and all(s == ("verified", "replicated") for s in _statuses(data)))
    for original in (data / "objects" / "originals").rglob("*.dcm"):
        copy = data / "replica" / original.relative_to(data / "objects")
        assert copy.read_bytes() == original.read_bytes()
    with sqlite3.connect(data / "index.sqlite3") as db:
        assert db.execute("select count(*) from outbox").fetchone()[0] == 0


def test_ingest_succeeds_while_redis_is_down_and_work_happens_when_it_returns(
    tier, redis_server: RedisServer  # type: ignore[no-untyped-def]
) -> None:
    redis_server.stop()
    try:
        parts = make_study(1, 3)
        body, ct = multipart_related(parts)
        resp = httpx.post(f"{tier['url']}/studies", content=body, headers={"content-type": ct},
                          timeout=60)
        assert resp.status_code == 200, resp.text
        time.sleep(1)
        assert all(s[1] == "pending" for s in _statuses(tier["data"]))
    finally:
        redis_server.start()
    wait_for(lambda: all(s == ("verified", "replicated") for s in _statuses(tier["data"])), 90)


def test_killed_worker_leaves_work_that_a_restarted_worker_finishes(tier) -> None:  # type: ignore[no-untyped-def]
    procs = tier["procs"]
    stop(procs["worker"], kill=True)
    parts = make_study(1, 4)
    body, ct = multipart_related(parts)
    assert httpx.post(f"{tier['url']}/studies", content=body,
                      headers={"content-type": ct}, timeout=60).status_code == 200
    time.sleep(1)
    procs["worker"] = spawn([str(BIN / "dicomgw-worker"), "worker", "--concurrency=1"],
                            tier["env"], tier["tmp"] / "worker2.log")
    wait_for(lambda: all(s == ("verified", "replicated") for s in _statuses(tier["data"])), 90)


def test_relay_publishes_only_while_the_queue_has_room(tmp_path: Path, redis_server: RedisServer) -> None:
    """Back-pressure: with no worker taking anything, the relay fills each queue up to its limit and
    leaves the other rows due in the outbox, instead of publishing them again every lease."""
    import asyncio
    from datetime import UTC, datetime

    import redis

    from dicomgw.config import Settings
    from dicomgw.index.models import OutboxItem
    from dicomgw.runtime import open_runtime
    from dicomgw_worker.celery_app import make_celery
    from dicomgw_worker.relay import relay_once

    broker = redis_server.url.rsplit("/", 1)[0] + "/7"  # a database of its own
    client = redis.Redis.from_url(broker)
    client.flushdb()
    settings = Settings(data_dir=tmp_path / "data")
    settings.worker.broker_url = broker
    settings.worker.relay_queue_limit = 3
    settings.worker.lease_seconds = 0  # every row is due again at once, as after a long backlog
    celery = make_celery(settings)

    async def go(rows: int = 0) -> list[int]:
        async with open_runtime(settings) as runtime:
            async with runtime.index.sessions.begin() as session:
                session.add_all([OutboxItem(task=task, key=f"k{n}", available_at=datetime.now(UTC))
                                 for n in range(rows) for task in ("verify", "replicate")])
            return [await relay_once(runtime, celery) for _ in range(3)]

    def queued(queue: str) -> list[list[str]]:
        """The outbox keys of each message waiting in the queue (Celery's message body: args, kwargs,
        embed; the one argument, a batch of [outbox id, key])."""
        messages = [json.loads(raw) for raw in client.lrange(queue, 0, -1)]
        return [[key for _, key in json.loads(base64.b64decode(m["body"]))[0][0]] for m in messages]

    assert asyncio.run(go(rows=8)) == [6, 0, 0]  # 3 per queue, then no room: nothing published twice
    assert queued("verify") == [["k0", "k1", "k2"]] and queued("replicate") == [["k0", "k1", "k2"]]
    client.delete("verify")  # the workers took the verify queue
    assert asyncio.run(go())[0] == 3  # the verify queue filled again; replicate still full
    assert queued("verify") == [["k0", "k1", "k2"]] and queued("replicate") == [["k0", "k1", "k2"]]


def test_relay_sends_due_rows_in_batches(tmp_path: Path, redis_server: RedisServer) -> None:
    """Verifications and replications go out ``batch_size`` rows to a message; repairs one by one."""
    import asyncio
    from datetime import UTC, datetime

    import redis

    from dicomgw import outbox
    from dicomgw.config import Settings
    from dicomgw.index.models import OutboxItem
    from dicomgw.runtime import open_runtime
    from dicomgw_worker.celery_app import make_celery
    from dicomgw_worker.relay import relay_once

    broker = redis_server.url.rsplit("/", 1)[0] + "/8"
    client = redis.Redis.from_url(broker)
    client.flushdb()
    settings = Settings(data_dir=tmp_path / "data")
    settings.worker.broker_url = broker
    settings.worker.batch_size = 4
    celery = make_celery(settings)

    async def go() -> tuple[int, int]:
        async with open_runtime(settings) as runtime:
            async with runtime.index.sessions.begin() as session:
                session.add_all([OutboxItem(task=task, key=f"k{n}", available_at=datetime.now(UTC))
                                 for n in range(10) for task in ("verify", "repair")])
            return await relay_once(runtime, celery), len(await outbox.due(runtime.index))

    assert asyncio.run(go()) == (20, 0)  # all published, and leased: none due again
    sizes = [len(json.loads(base64.b64decode(json.loads(raw)["body"]))[0][0])
             for raw in client.lrange("verify", 0, -1)]
    assert sorted(sizes) == [2, 4, 4]
    assert client.llen("replicate") == 10  # the repairs' queue: a message each


def test_relay_publishes_compaction_only_while_no_integrity_work_waits(
        tmp_path: Path, redis_server: RedisServer) -> None:
    """Verifications and replications first: compaction rows stay due while any wait or are queued."""
    import asyncio
    from datetime import UTC, datetime

    import redis

    from dicomgw.config import Settings
    from dicomgw.index.models import OutboxItem
    from dicomgw.runtime import open_runtime
    from dicomgw_worker.celery_app import make_celery
    from dicomgw_worker.relay import relay_once

    broker = redis_server.url.rsplit("/", 1)[0] + "/9"
    client = redis.Redis.from_url(broker)
    client.flushdb()
    settings = Settings(data_dir=tmp_path / "data")
    settings.worker.broker_url = broker
    celery = make_celery(settings)

    async def go(tasks: tuple[str, ...] = ()) -> int:
        async with open_runtime(settings) as runtime:
            async with runtime.index.sessions.begin() as session:
                session.add_all([OutboxItem(task=task, key=f"{task}{n}", available_at=datetime.now(UTC))
                                 for n in range(3) for task in tasks])
            return await relay_once(runtime, celery)

    assert asyncio.run(go(("verify", "compact"))) == 3  # the verifications only
    assert client.llen("verify") == 1 and client.llen("compact") == 0
    assert asyncio.run(go()) == 0  # verifications still queued: compaction waits
    client.delete("verify")  # the workers took them
    assert asyncio.run(go()) == 3 and client.llen("compact") == 1
