"""The Celery tier over a real Redis: the relay hands outbox rows to workers that replicate and verify.

Services and worker share one data folder here (SQLite index, local primary and replica folders); the
full stack with MinIO and PostgreSQL is exercised by the distributed-tier tests.
"""

from __future__ import annotations

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
