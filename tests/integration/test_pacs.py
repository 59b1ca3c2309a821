"""Hospital integration with a real Orthanc: forwarding rule by STOW-RS, and backfill with resumption.

The gateway requires credentials, as a deployment does: Orthanc's DICOMweb client and `dicomgw pacs
import` send an API key made with `dicomgw keys create`.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pydicom

from tests.dicomdata import make_study, split_multipart
from tests.fixtures.gateway import Gateway
from tests.fixtures.orthanc import OrthancServer

DICOMGW = str(Path(sys.executable).parent / "dicomgw")
ANY_TS = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def _secured(make_gateway, scopes: str = "dicom.read,dicom.write") -> tuple[Gateway, dict[str, str], str]:  # type: ignore[no-untyped-def]
    """A gateway requiring credentials, the headers of a fresh API key, and the key."""
    import os

    gw: Gateway = make_gateway({"DICOMGW_AUTH_MODE": "required"})
    env = {**os.environ, "DATA_DIR": str(gw.data_dir),
           "DICOMGW_INDEX_URL": f"sqlite+aiosqlite:///{gw.data_dir.resolve() / 'index.sqlite3'}"}
    made = subprocess.run([DICOMGW, "keys", "create", "orthanc-forwarder", "--scopes", scopes],
                          capture_output=True, text=True, env=env, timeout=60)
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip().splitlines()[-1]
    assert httpx.get(f"{gw.url}/studies").status_code == 401
    return gw, {"Authorization": f"Bearer {key}"}, key


def _study_uid(data: bytes) -> str:
    return str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).StudyInstanceUID)


def _send_by_dimse(orthanc: OrthancServer, parts: list[bytes], folder: Path) -> None:
    """C-STORE the instances to Orthanc with dcmtk's storescu, as a modality would."""
    files = []
    for i, data in enumerate(parts):
        files.append(folder / f"{i}.dcm")
        files[-1].write_bytes(data)
    sent = subprocess.run([shutil.which("storescu") or "storescu", "-aec", orthanc.aet, "127.0.0.1",
                           str(orthanc.dicom_port), *map(str, files)], capture_output=True, text=True,
                          timeout=60)
    assert sent.returncode == 0, sent.stdout + sent.stderr


def _wait_for_instances(root: str, study: str, count: int, headers: dict[str, str],
                        orthanc: OrthancServer) -> None:
    """Until the gateway (at the DICOMweb root ``root``) holds ``count`` instances of the study."""
    deadline = time.monotonic() + 60
    found: list[object] = []
    while time.monotonic() < deadline and len(found) < count:
        found = httpx.get(f"{root}/studies/{study}/instances", headers=headers).json()
        time.sleep(0.5)
    assert len(found) == count, orthanc.log.read_text()[-2000:]


def test_orthanc_forwards_new_studies_to_the_gateway(make_gateway, orthanc: OrthancServer,  # type: ignore[no-untyped-def]
                                                     tmp_path: Path) -> None:
    gw, auth, key = _secured(make_gateway)
    done = subprocess.run([DICOMGW, "pacs", "connect", "--orthanc", orthanc.url, "--gateway", gw.url,
                           "--token", key], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    parts = make_study(2, 2)
    _send_by_dimse(orthanc, parts, tmp_path)
    study = _study_uid(parts[0])
    _wait_for_instances(gw.url, study, 4, auth, orthanc)
    resp = httpx.get(f"{gw.url}/studies/{study}", headers={**auth, "accept": ANY_TS})
    parts_back = split_multipart(resp.content, resp.headers["content-type"])
    got = {str(d.SOPInstanceUID): d for d in (pydicom.dcmread(io.BytesIO(p)) for _, p in parts_back)}
    for data in parts:
        original = pydicom.dcmread(io.BytesIO(data))
        assert np.array_equal(got[str(original.SOPInstanceUID)].pixel_array, original.pixel_array)


def test_orthanc_forwards_into_a_named_partition(make_gateway, orthanc: OrthancServer,  # type: ignore[no-untyped-def]
                                                tmp_path: Path) -> None:
    """A hospital's PACS forwards into the hospital's partition: the forwarding rule is given the
    partition's DICOMweb root, and a key that may write there and nowhere else."""
    import os

    gw, admin, admin_key = _secured(make_gateway, "dicom.admin,dicom.read")
    created = subprocess.run([DICOMGW, "partitions", "create", "hospital-a", "--url", gw.url,
                              "--token", admin_key], capture_output=True, text=True, timeout=60)
    assert created.returncode == 0, created.stderr
    env = {**os.environ, "DATA_DIR": str(gw.data_dir),
           "DICOMGW_INDEX_URL": f"sqlite+aiosqlite:///{gw.data_dir.resolve() / 'index.sqlite3'}"}
    made = subprocess.run([DICOMGW, "keys", "create", "hospital-a-pacs", "--scopes",
                           "dicom.write:hospital-a,dicom.read:hospital-a"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip().splitlines()[-1]
    root = f"{gw.url}/partitions/hospital-a"
    done = subprocess.run([DICOMGW, "pacs", "connect", "--orthanc", orthanc.url, "--gateway", root,
                           "--token", key], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    parts = make_study(1, 3)
    _send_by_dimse(orthanc, parts, tmp_path)
    study = _study_uid(parts[0])
    _wait_for_instances(root, study, 3, admin, orthanc)
    # in the hospital's partition only
    assert httpx.get(f"{gw.url}/studies/{study}/instances", headers=admin).json() == []


def test_backfill_imports_everything_once(make_gateway, orthanc: OrthancServer) -> None:  # type: ignore[no-untyped-def]
    gw, auth, key = _secured(make_gateway)
    studies = [make_study(1, 3, study_date="20230105"), make_study(2, 2, study_date="20240610")]
    for parts in studies:
        for data in parts:
            assert httpx.post(f"{orthanc.url}/instances", content=data).status_code == 200
    args = ["pacs", "import", "--orthanc", orthanc.url, "--gateway", gw.url, "--token", key]
    first = subprocess.run([DICOMGW, *args], capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stdout + first.stderr
    report = json.loads(first.stdout.strip().splitlines()[-1])
    assert report == {"studies": 2, "imported": 2, "already_present": 0, "instances": 7, "failed": 0}
    for parts in studies:
        held = httpx.get(f"{gw.url}/studies/{_study_uid(parts[0])}/instances", headers=auth).json()
        assert len(held) == len(parts)
    second = subprocess.run([DICOMGW, *args], capture_output=True, text=True, timeout=120)
    report = json.loads(second.stdout.strip().splitlines()[-1])
    assert report == {"studies": 2, "imported": 0, "already_present": 2, "instances": 0, "failed": 0}
    since = subprocess.run([DICOMGW, *args, "--since", "20240101"], capture_output=True, text=True)
    assert json.loads(since.stdout.strip().splitlines()[-1])["studies"] == 1


def test_backfill_through_the_worker_tier(make_gateway, orthanc: OrthancServer, redis_server,  # type: ignore[no-untyped-def]
                                          tmp_path: Path) -> None:
    """Where a worker tier runs, each study is an import task for the Celery workers."""
    import os

    from tests.fixtures.processes import BIN, spawn, stop

    gw, auth, key = _secured(make_gateway)
    env = {"DATA_DIR": str(tmp_path / "worker"), "DICOMGW_WORKER_BROKER_URL": redis_server.url}
    worker = spawn([str(BIN / "dicomgw-worker"), "worker", "--concurrency=1"], env,
                   tmp_path / "worker.log")
    try:
        studies = [make_study(1, 3), make_study(1, 2)]
        for parts in studies:
            for data in parts:
                assert httpx.post(f"{orthanc.url}/instances", content=data).status_code == 200
        done = subprocess.run(
            [DICOMGW, "pacs", "import", "--orthanc", orthanc.url, "--gateway", gw.url,
             "--via-worker", "--timeout", "120", "--token", key],
            capture_output=True, text=True, timeout=180, env={**os.environ, **env})
        assert done.returncode == 0, done.stdout + done.stderr + (tmp_path / "worker.log").read_text()
        assert json.loads(done.stdout.strip().splitlines()[-1]) == {
            "studies": 2, "complete": 2, "incomplete": 0}
        for parts in studies:
            held = httpx.get(f"{gw.url}/studies/{_study_uid(parts[0])}/instances", headers=auth).json()
            assert len(held) == len(parts)
    finally:
        stop(worker)


def test_forwarding_recovers_after_the_gateway_was_away(make_gateway, orthanc: OrthancServer,  # type: ignore[no-untyped-def]
                                                        tmp_path: Path) -> None:
    """A study that arrives while the gateway is down is forwarded once it is back (issue 11): the
    rule's quick resubmits fail during the outage, and the next study to arrive sends it again."""
    from urllib.parse import urlsplit

    from tests.fixtures.gateway import start_gateway

    gw, auth, key = _secured(make_gateway)
    done = subprocess.run([DICOMGW, "pacs", "connect", "--orthanc", orthanc.url, "--gateway", gw.url,
                           "--token", key], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    port = urlsplit(gw.url).port
    gw.stop()

    during = make_study(1, 2)
    (tmp_path / "during").mkdir()
    _send_by_dimse(orthanc, during, tmp_path / "during")
    deadline = time.monotonic() + 60  # stable after 2 s, then six failed attempts
    while time.monotonic() < deadline:
        jobs = httpx.get(f"{orthanc.url}/jobs", params={"expand": ""}).json()
        failed = [j for j in jobs if j["Type"] == "DicomWebStowClient" and j["State"] == "Failure"]
        if failed and len(jobs) == len(failed):
            time.sleep(3)  # past the quick resubmits
            break
        time.sleep(0.5)
    else:
        raise AssertionError(orthanc.log.read_text()[-2000:])

    back = start_gateway(gw.data_dir, {"DICOMGW_AUTH_MODE": "required"}, port=port)
    try:
        after = make_study(1, 2)
        (tmp_path / "after").mkdir()
        _send_by_dimse(orthanc, after, tmp_path / "after")
        _wait_for_instances(back.url, _study_uid(after[0]), 2, auth, orthanc)
        _wait_for_instances(back.url, _study_uid(during[0]), 2, auth, orthanc)
    finally:
        back.stop()
