"""Embedded mode with a replica folder: every original copied and verified, damage repaired."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx

from tests.dicomdata import make_study, multipart_related
from tests.polling import wait_for

FAST = {
    "DICOMGW_REPLICA_BACKEND": "local",
    "DICOMGW_WORKER_POLL_SECONDS": "0.1",
    "DICOMGW_WORKER_SWEEP_SECONDS": "0.5",
    "DICOMGW_WORKER_VERIFY_CYCLE_SECONDS": "1",
}


def _rows(data_dir: Path) -> list[tuple[str, str, str]]:
    with sqlite3.connect(data_dir / "index.sqlite3") as db:
        return db.execute("select object_key, verify_status, replica_status from instances").fetchall()


def test_every_original_is_replicated_byte_exact_and_damage_is_repaired(make_gateway) -> None:  # type: ignore[no-untyped-def]
    gw = make_gateway(env=FAST)
    parts = make_study(1, 4)
    body, ct = multipart_related(parts)
    assert httpx.post(f"{gw.url}/studies", content=body, headers={"content-type": ct}).status_code == 200
    wait_for(lambda: all(r[2] == "replicated" for r in _rows(gw.data_dir)) and _rows(gw.data_dir))
    for key, _, _ in _rows(gw.data_dir):
        assert (gw.data_dir / "replica" / key).read_bytes() == (gw.data_dir / "objects" / key).read_bytes()

    # damage at rest: flip bytes in one primary object, delete one replica object
    keys = [r[0] for r in _rows(gw.data_dir)]
    damaged = gw.data_dir / "objects" / keys[0]
    good = damaged.read_bytes()
    damaged.write_bytes(good[:-10] + b"\xff" * 10)
    (gw.data_dir / "replica" / keys[1]).unlink()

    wait_for(lambda: damaged.read_bytes() == good)
    wait_for(lambda: (gw.data_dir / "replica" / keys[1]).exists())
    replica, primary = gw.data_dir / "replica" / keys[1], gw.data_dir / "objects" / keys[1]
    assert replica.read_bytes() == primary.read_bytes()
    with sqlite3.connect(gw.data_dir / "index.sqlite3") as db:
        repaired = db.execute("select sum(repaired_count) from instances").fetchone()[0]
    assert repaired >= 1
