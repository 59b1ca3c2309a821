"""The distributed tier for real: split services behind nginx, PostgreSQL, two MinIOs, Redis, Celery.

One stack per session (tests/fixtures/stack.py: the code behind `make up`, on free
ports). Fault injection ends,
every time, with zero acknowledged instances lost or changed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import io
import time
from pathlib import Path
from typing import Any

import httpx
import pydicom

from dicomgw.config import StorageSettings
from dicomgw.storage.s3 import S3Store
from tests.dicomdata import make_instance, make_study, multipart_related, split_multipart
from tests.fixtures.stack import StackUnderTest as Stack
from tests.polling import wait_for

ANY_TS = 'multipart/related; type="application/dicom"; transfer-syntax=*'


class Bucket:
    """Direct access to one of the stack's buckets, behind the gateway's back (to do damage)."""

    def __init__(self, stack: Stack, port: int, bucket: str) -> None:
        c = stack.config
        self.settings = StorageSettings(backend="s3", endpoint_url=f"http://127.0.0.1:{port}",
                                        bucket=bucket, access_key=c.minio_user,
                                        secret_key=c.minio_password, create_bucket=False)

    def _run(self, action):  # type: ignore[no-untyped-def]
        async def go():  # type: ignore[no-untyped-def]
            store = await S3Store.open(self.settings)
            try:
                return await action(store)
            finally:
                await store.close()

        return asyncio.run(go())

    def digests(self) -> dict[str, str]:
        async def action(store: S3Store) -> dict[str, str]:
            return {key: hashlib.sha256(await store.read(key)).hexdigest()
                    async for key in store.list_keys()}

        return self._run(action)

    def put(self, key: str, data: bytes) -> None:
        self._run(lambda store: store.put_bytes(key, data))

    def delete(self, key: str) -> None:
        self._run(lambda store: store.delete(key))


def primary(stack: Stack) -> Bucket:
    return Bucket(stack, stack.config.minio_port, "dicom-originals")


def replica(stack: Stack) -> Bucket:
    return Bucket(stack, stack.config.replica_port, "dicom-replica")


def stow(stack: Stack, parts: list[bytes]) -> httpx.Response:
    body, ct = multipart_related(parts)
    return stack.http.post(f"{stack.config.url}/studies", content=body, headers={"content-type": ct},
                      timeout=120)


def status(stack: Stack) -> dict[str, Any]:
    return stack.http.get(f"http://127.0.0.1:{stack.config.port}/admin/status", timeout=10).json()


def all_settled(stack: Stack) -> bool:
    s = status(stack)
    return (s["verified"] == s["instances"] and s["replica"]["replicated"] == s["instances"]
            and s["mismatched"] == s["missing"] == s["lost"] == 0)


def assert_intact(stack: Stack, parts: list[bytes]) -> None:
    """Every acknowledged instance comes back byte-exact through the router."""
    for data in parts:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        url = (f"{stack.config.url}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
               f"/instances/{ds.SOPInstanceUID}")
        resp = stack.http.get(url, headers={"accept": ANY_TS}, timeout=60)
        assert resp.status_code == 200, resp.text
        [(_, payload)] = split_multipart(resp.content, resp.headers["content-type"])
        assert payload == data


def test_router_sends_each_transaction_to_its_service(stack: Stack) -> None:
    parts = make_study(2, 2)
    assert stow(stack, parts).status_code == 200
    url = stack.config.url
    ds = pydicom.dcmread(io.BytesIO(parts[0]), stop_before_pixels=True)
    assert stack.http.get(f"{url}/studies", params={"StudyInstanceUID": ds.StudyInstanceUID}).json()
    assert len(stack.http.get(f"{url}/studies/{ds.StudyInstanceUID}/series").json()) == 2
    assert len(stack.http.get(f"{url}/studies/{ds.StudyInstanceUID}/metadata").json()) == 4
    frame = stack.http.get(f"{url}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/"
                      f"{ds.SOPInstanceUID}/frames/1")
    assert frame.status_code == 200
    assert_intact(stack, parts)
    refused = stack.http.post(f"{url}/studies", content=b"x", headers={"content-type": "text/plain"})
    assert refused.status_code == 415
    assert stack.http.get(f"{url}/studies/1.2.3/metadata").status_code == 404
    # absolute URLs point back through the router
    assert stack.http.get(f"{url}/studies", params={"StudyInstanceUID": ds.StudyInstanceUID}).json()[0][
        "00081190"]["Value"][0].startswith(url)


def test_every_original_is_replicated_with_the_same_sha256(stack: Stack) -> None:
    parts = make_study(1, 5)
    assert stow(stack, parts).status_code == 200
    wait_for(lambda: all_settled(stack))
    originals, copies = primary(stack).digests(), replica(stack).digests()
    assert originals == copies
    for key, digest in originals.items():
        if key.startswith("originals/") or "/originals/" in key:  # of every partition
            assert key.endswith(f"/{digest}.dcm")  # content-addressed by the SHA-256
        else:  # derived data beside them: a research collection's manifest, report and volumes
            assert "/collection/v" in key, key


def test_redis_down_during_stow_delays_replication_only(stack: Stack) -> None:
    stack.stop("redis")
    try:
        parts = make_study(1, 3)
        resp = stow(stack, parts)
        assert resp.status_code == 200, resp.text
        assert_intact(stack, parts)
        time.sleep(2)
        assert status(stack)["replica"]["pending"] >= 3
    finally:
        stack.start("redis")
    wait_for(lambda: all_settled(stack))


def test_killed_worker_is_restarted_and_resumes(stack: Stack) -> None:
    parts = [make_instance(rows=1024, columns=1024, frames=4, seed=i) for i in range(6)]  # 8 MiB each
    assert stow(stack, parts).status_code == 200
    time.sleep(0.3)  # replication under way
    killed = stack.kill("worker")  # kill -9 of the whole pod's processes; supervisord restarts it
    wait_for(lambda: stack.pids().get("worker", killed) != killed, 60)
    wait_for(lambda: all_settled(stack), 120)
    assert_intact(stack, parts)


def test_a_killed_service_is_restarted_and_the_router_answers_503_meanwhile(stack: Stack) -> None:
    stack.stop("query")  # away, as between a kill and its restart
    try:
        resp = stack.http.get(f"{stack.config.url}/studies")
        # a retryable answer, never nginx's 502
        assert resp.status_code == 503 and resp.headers["retry-after"] == "5", resp.text
        assert resp.headers["content-type"] == "application/problem+json"
        assert resp.json()["status"] == 503
    finally:
        stack.start("query")
    killed = stack.kill("query")  # kill -9: supervisord starts it again by itself
    wait_for(lambda: stack.pids().get("query", killed) != killed, 60)
    wait_for(lambda: stack.http.get(f"{stack.config.url}/studies").status_code == 200, 60)


def test_primary_store_down_fails_clearly_and_loses_nothing(stack: Stack) -> None:
    before = make_study(1, 2)
    assert stow(stack, before).status_code == 200
    stack.stop("minio")
    try:
        during = make_study(1, 2)
        resp = stow(stack, during)
        # a 503 that a forwarder retries (issue 11), where a 409 made it give up
        assert resp.status_code == 503 and int(resp.headers["retry-after"]) > 0
        reasons = [i["00081197"]["Value"][0] for i in resp.json()["00081198"]["Value"]]
        assert reasons == [0xA700, 0xA700]
    finally:
        stack.start("minio")
    assert_intact(stack, before)
    assert stow(stack, during).status_code == 200  # the client's retry succeeds
    assert_intact(stack, during)
    wait_for(lambda: all_settled(stack))


def test_corruption_at_rest_is_repaired_from_the_replica(stack: Stack) -> None:
    parts = make_study(1, 2)
    assert stow(stack, parts).status_code == 200
    wait_for(lambda: all_settled(stack))
    ds = pydicom.dcmread(io.BytesIO(parts[0]), stop_before_pixels=True)
    [key] = [k for k in primary(stack).digests() if f"/{ds.SOPInstanceUID}/" in k]
    primary(stack).put(key, parts[0][:-100] + b"\xff" * 100)
    repaired_before = status(stack)["repaired"]
    wait_for(lambda: status(stack)["repaired"] > repaired_before)
    wait_for(lambda: all_settled(stack))
    assert_intact(stack, parts)


def test_deleted_replica_copy_is_replicated_again(stack: Stack) -> None:
    parts = make_study(1, 2)
    assert stow(stack, parts).status_code == 200
    wait_for(lambda: all_settled(stack))
    ds = pydicom.dcmread(io.BytesIO(parts[1]), stop_before_pixels=True)
    [key] = [k for k in replica(stack).digests() if f"/{ds.SOPInstanceUID}/" in k]
    replica(stack).delete(key)
    wait_for(lambda: key in replica(stack).digests())
    assert hashlib.sha256(parts[1]).hexdigest() == replica(stack).digests()[key]


def test_concurrent_stow_of_one_instance_keeps_one_copy(stack: Stack) -> None:
    part = make_instance(seed=99)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda _: stow(stack, [part]), range(4)))
    assert all(r.status_code == 200 for r in responses)
    ds = pydicom.dcmread(io.BytesIO(part), stop_before_pixels=True)
    copies = [k for k in primary(stack).digests() if f"/{ds.SOPInstanceUID}/" in k]
    assert len(copies) == 1
    assert_intact(stack, [part])


def test_make_down_stops_a_stack_started_elsewhere(tmp_path: Path) -> None:
    assert Stack.down_from(tmp_path) == 0  # nothing running there: nothing to stop


def test_dimse_front_door_of_the_stack_stores_into_minio(stack: Stack) -> None:
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

    from tests.dicomdata import make_dataset

    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", stack.config.dimse_port, ae_title="DICOMGW")
    assert assoc.is_established
    ds = make_dataset()
    assert assoc.send_c_store(ds).Status == 0x0000
    assoc.release()
    found = stack.http.get(f"{stack.config.url}/studies/{ds.StudyInstanceUID}/instances").json()
    assert [i["00080018"]["Value"][0] for i in found] == [ds.SOPInstanceUID]


def test_a_refused_stow_leaves_the_clients_connection_usable(stack: Stack) -> None:
    """Through the router (request bodies streamed), a STOW refused before its body was read used to
    make nginx close the client's keep-alive connection after the answer, unannounced: the next request
    on it failed with a disconnect about one time in twenty. The services now read a small body before
    answering an error (dicomgw.web.app.DrainUnreadBody)."""
    url = stack.config.url
    with httpx.Client(headers=stack.headers, timeout=60) as client:
        for _ in range(400):
            refused = client.post(f"{url}/studies", content=b"x", headers={"content-type": "text/plain"})
            assert refused.status_code == 415
            assert client.get(f"{url}/studies/1.2.3/metadata").status_code == 404
