"""While a back end is away, every request gets an answer a client can act on: 503 with Retry-After.

A hospital's forwarder retries a 503 and gives up on a 409 or a 500, so the index database crashing,
or the object store stopping, must never be answered as a refusal or as an internal error; readiness
drops and liveness does not; and once the back end is back, the requests sent again are stored and
nothing acknowledged before is lost or changed. Real PostgreSQL and MinIO, stopped in the middle.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.dicomdata import make_study, multipart_related
from tests.fixtures.gateway import Gateway, start_gateway
from tests.fixtures.minio import MinioServer, start_minio
from tests.fixtures.postgres import PostgresServer, start_postgres
from tests.polling import wait_for

pytestmark = pytest.mark.timeout(300)
DICOMGW = Path(sys.executable).parent / "dicomgw"
STUDY_JSON = {"accept": "application/dicom+json"}
WHOLE = {"accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}


def _stow(gw: Gateway, parts: list[bytes]) -> httpx.Response:
    body, content_type = multipart_related(parts)
    return httpx.post(f"{gw.url}/studies", content=body, timeout=60,
                      headers={"content-type": content_type, **STUDY_JSON})


def _assert_retry_later(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text[:500]
    assert int(response.headers["retry-after"]) > 0


def _study_uid(data: bytes) -> str:
    import io

    import pydicom

    return str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).StudyInstanceUID)


def _stored_digests(gw: Gateway, study: str) -> set[str]:
    from tests.dicomdata import split_multipart

    r = httpx.get(f"{gw.url}/studies/{study}", headers=WHOLE, timeout=60)
    assert r.status_code == 200, r.text[:300]
    return {hashlib.sha256(body).hexdigest()
            for _, body in split_multipart(r.content, r.headers["content-type"])}


def _assert_intact(gw: Gateway, parts: list[bytes]) -> None:
    """The study of ``parts`` is served, every instance byte for byte."""
    assert _stored_digests(gw, _study_uid(parts[0])) == {hashlib.sha256(p).hexdigest() for p in parts}


def _assert_not_ready_but_alive(gw: Gateway, check: str) -> None:
    ready = httpx.get(f"{gw.root}/readyz", timeout=30)
    assert ready.status_code == 503 and ready.json()["checks"][check] != "ok"
    assert httpx.get(f"{gw.root}/healthz", timeout=30).status_code == 200


def _wait_until_ready(gw: Gateway) -> None:
    wait_for(lambda: httpx.get(f"{gw.root}/readyz", timeout=30).status_code == 200, 60)


@pytest.fixture
def postgres() -> Iterator[PostgresServer]:
    server = start_postgres()
    yield server
    server.close()


def test_the_index_database_crashing_is_a_503_and_nothing_is_lost(postgres: PostgresServer,
                                                                   tmp_path: Path) -> None:
    gw = start_gateway(tmp_path / "gw", {"DICOMGW_INDEX_URL": postgres.create_database()})
    try:
        before, during = make_study(1, 3), make_study(1, 3)
        first, second = _study_uid(before[0]), _study_uid(during[0])
        assert _stow(gw, before).status_code == 200

        postgres.crash()
        stow = _stow(gw, during)
        _assert_retry_later(stow)
        for path in ("/studies", f"/studies/{first}/series", f"/studies/{first}/metadata"):
            r = httpx.get(gw.url + path, headers=STUDY_JSON, timeout=60)
            _assert_retry_later(r)
            assert r.headers["content-type"].startswith("application/problem+json"), path
        _assert_not_ready_but_alive(gw, "index")

        postgres.start()
        _wait_until_ready(gw)
        assert _stow(gw, during).status_code == 200  # the forwarder's retry
        studies = {s["0020000D"]["Value"][0]
                   for s in httpx.get(f"{gw.url}/studies", headers=STUDY_JSON, timeout=60).json()}
        assert {first, second} <= studies
        _assert_intact(gw, before)
        _assert_intact(gw, during)
    finally:
        gw.stop()


def test_the_object_store_stopping_is_a_503_and_nothing_is_lost(tmp_path: Path) -> None:
    minio: MinioServer = start_minio(tmp_path / "minio")
    gw = start_gateway(tmp_path / "gw", minio.env("t-" + uuid.uuid4().hex[:16]))
    try:
        before, during = make_study(1, 3), make_study(1, 3)
        first = _study_uid(before[0])
        assert _stow(gw, before).status_code == 200

        minio.stop()
        stow = _stow(gw, during)
        _assert_retry_later(stow)
        failed = stow.json()["00081198"]["Value"]  # the STOW answer still says which and why
        assert len(failed) == len(during)
        assert {item["00081197"]["Value"][0] for item in failed} == {0xA700}
        retrieve = httpx.get(f"{gw.url}/studies/{first}", headers=WHOLE, timeout=60)
        _assert_retry_later(retrieve)
        _assert_not_ready_but_alive(gw, "store")

        minio.start()
        _wait_until_ready(gw)
        assert _stow(gw, during).status_code == 200
        _assert_intact(gw, before)
        _assert_intact(gw, during)
    finally:
        gw.stop()
        minio.stop()


def test_the_upload_cli_rides_out_a_stopped_object_store(tmp_path: Path) -> None:
    minio: MinioServer = start_minio(tmp_path / "minio")
    gw = start_gateway(tmp_path / "gw", minio.env("t-" + uuid.uuid4().hex[:16]))
    folder = tmp_path / "upload"
    folder.mkdir()
    parts = make_study(2, 4)
    for i, data in enumerate(parts):
        (folder / f"{i}.dcm").write_bytes(data)
    try:
        minio.stop()  # away when the upload starts, back a few seconds later
        comeback = threading.Timer(3, minio.start)
        comeback.start()
        started = time.monotonic()
        done = subprocess.run([str(DICOMGW), "upload", str(folder), "--url", gw.url, "--batch-mb", "0.05"],
                              capture_output=True, text=True, timeout=240)
        comeback.join()
        assert done.returncode == 0, done.stdout + done.stderr
        assert time.monotonic() - started >= 3  # it did wait for the store
        _assert_intact(gw, parts)
    finally:
        gw.stop()
        minio.stop()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs: the embedded gateway's whole data folder (index, spool, objects) fills it."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"this machine does not let the tests mount a tmpfs: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_is_a_503_and_nothing_is_lost(small_disk: Path) -> None:
    gw = start_gateway(small_disk / "gw")
    try:
        acknowledged: list[list[bytes]] = []
        refused: list[bytes] = []
        for _ in range(60):
            parts = make_study(1, 4)
            r = _stow(gw, parts)
            if r.status_code == 200:
                acknowledged.append(parts)
                continue
            _assert_retry_later(r)
            refused = parts
            break
        assert refused and len(acknowledged) > 3, "the disk never filled"
        for parts in acknowledged:  # everything acknowledged before is there, byte for byte
            _assert_intact(gw, parts)
        assert httpx.get(f"{gw.root}/healthz", timeout=30).status_code == 200

        subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
        assert _stow(gw, refused).status_code == 200  # the retry, once there is room
        _assert_intact(gw, refused)
    finally:
        gw.stop()
