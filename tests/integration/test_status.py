"""Integrity status: the admin endpoint, readiness, and `dicomgw verify --report`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.dicomdata import make_study, multipart_related

FAST = {"DICOMGW_REPLICA_BACKEND": "local", "DICOMGW_WORKER_POLL_SECONDS": "0.1"}


def test_status_counts_verified_and_replicated_originals(make_gateway) -> None:  # type: ignore[no-untyped-def]
    gw = make_gateway(env=FAST)
    assert httpx.get(f"{gw.root}/readyz").json()["ready"] is True
    body, ct = multipart_related(make_study(1, 3))
    assert httpx.post(f"{gw.url}/studies", content=body, headers={"content-type": ct}).status_code == 200
    deadline = time.monotonic() + 30
    status = {}
    while time.monotonic() < deadline:
        status = httpx.get(f"{gw.root}/admin/status").json()
        if status["verified"] == 3 and status["replica"]["replicated"] == 3:
            break
        time.sleep(0.2)
    assert status["instances"] == 3 and status["verified"] == 3
    assert status["replica"] == {"enabled": True, "replicated": 3, "pending": 0, "missing": 0}
    assert status["oldest_unverified_seconds"] == 0.0


def test_verify_report_finds_damage(make_gateway, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    gw = make_gateway(env=FAST)
    body, ct = multipart_related(make_study(1, 2))
    httpx.post(f"{gw.url}/studies", content=body, headers={"content-type": ct})
    time.sleep(0.5)
    gw.stop()
    env = {**os.environ, "DATA_DIR": str(gw.data_dir), **FAST}
    cli = str(Path(sys.executable).parent / "dicomgw")
    clean = subprocess.run([cli, "verify", "--report", "--json"], env=env, capture_output=True, text=True)
    assert clean.returncode == 0, clean.stderr
    assert json.loads(clean.stdout)["instances"] == 2
    victim = next((gw.data_dir / "objects" / "originals").rglob("*.dcm"))
    victim.write_bytes(victim.read_bytes()[:-1] + b"\x00")
    # the embedded loop verifies queued work: restart it, queue everything, wait for the verdict
    gw2 = _restart(make_gateway, gw.data_dir)
    subprocess.run([cli, "verify", "--now", "--json"], env=env, capture_output=True, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = httpx.get(f"{gw2.root}/admin/status").json()
        if status["repaired"] >= 1:
            break
        time.sleep(0.2)
    assert status["repaired"] >= 1
    text_report = subprocess.run([cli, "verify", "--report"], env=env, capture_output=True, text=True)
    assert "repaired" in text_report.stdout


def _restart(make_gateway, data_dir: Path):  # type: ignore[no-untyped-def]
    return make_gateway(env=FAST, data_dir=data_dir)
