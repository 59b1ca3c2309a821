"""The cold tier as an operator deploys it: primary, replica and cold are MinIO buckets.

Originals past their partition's age move, compacted, into the cold bucket written with its own S3
storage class (MinIO's REDUCED_REDUNDANCY here; STANDARD_IA or GLACIER_IR on AWS), leave the hot bucket,
and are still served byte for byte, frame by frame, and verified from there. A cold copy that no row
keeps in the cold tier (a move that did not commit, a copy in another form) is removed by the orphan
sweep, and nothing else is.
"""

from __future__ import annotations

import io
import sqlite3
import uuid
from pathlib import Path

import pydicom
import pytest

from tests.dicomdata import multipart_related, split_multipart
from tests.fixtures.minio import MinioServer
from tests.integration.test_compaction import _corpus, _frames, _gateway, _settle

COLD_CLASS = "REDUCED_REDUNDANCY"


def _bucket(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:12]}"


async def test_old_originals_live_in_a_cold_bucket_of_their_own_class_and_its_leftovers_are_swept(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, minio_server: MinioServer) -> None:
    from dicomgw.index.repository import work_key
    from dicomgw.orphans import sweep_orphans
    from dicomgw_worker import tasks

    env = {**minio_server.env(_bucket("hot")), **minio_server.env(_bucket("replica"), "DICOMGW_REPLICA_"),
           **minio_server.env(_bucket("cold"), "DICOMGW_COLD_"), "DICOMGW_COLD_STORAGE_CLASS": COLD_CLASS,
           "DICOMGW_COLD_AFTER_SECONDS": "0", "DICOMGW_COLD_DROP_AFTER_SECONDS": "0"}
    corpus = _corpus()[:4]  # CT, MR, a 10-frame MR, RGB
    async with _gateway(tmp_path, monkeypatch, **env) as (runtime, c):
        created = await c.post("/admin/partitions", json={"name": "stays-hot", "coldAfterSeconds": -1})
        assert created.status_code == 201, created.text
        body, ct = multipart_related(corpus)
        resp = await c.post("/dicom-web/studies", content=body, headers={"content-type": ct})
        assert resp.status_code == 200, resp.text
        hot_only = corpus[0]
        body, ct = multipart_related([hot_only])
        resp = await c.post("/dicom-web/partitions/stays-hot/studies", content=body,
                            headers={"content-type": ct})
        assert resp.status_code == 200, resp.text
        await _settle(runtime)
        with sqlite3.connect(tmp_path / "index.sqlite3") as db:
            rows = {(p, uid): (tier, form, key) for p, uid, tier, form, key in db.execute(
                "select partition_name, sop_instance_uid, tier, stored_form, object_key from instances")}
        assert {tier for (p, _), (tier, _, _) in rows.items() if p == "default"} == {"cold"}
        assert {tier for (p, _), (tier, _, _) in rows.items() if p == "stays-hot"} == {"hot"}

        cold, hot = runtime.cold, runtime.store.hot
        cold_keys = sorted([k async for k in cold.list_keys("originals/")])
        assert len(cold_keys) == len(corpus) and [k async for k in hot.list_keys("originals/")] == []
        for key in cold_keys:  # written in the cold tier's own storage class
            head = await cold._client.head_object(Bucket=cold.bucket, Key=key)
            assert head.get("StorageClass") == COLD_CLASS, head

        # served from the cold bucket: whole instances, and single frames by ranged reads
        for original in corpus:
            ds = pydicom.dcmread(io.BytesIO(original), stop_before_pixels=True)
            base = (f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/"
                    f"{ds.SOPInstanceUID}")
            resp = await c.get(base, headers={
                "accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
            assert resp.status_code == 200, resp.text
            [(_, payload)] = split_multipart(resp.content, resp.headers["content-type"])
            assert payload == original
            frames = _frames(original)
            last = len(frames)
            resp = await c.get(f"{base}/frames/{last}", headers={
                "accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'})
            assert resp.status_code == 200, resp.text
            [(_, frame)] = split_multipart(resp.content, resp.headers["content-type"])
            assert frame == frames[-1]
            assert await tasks.verify(runtime, work_key("default", ds.SOPInstanceUID)) == "verified"

        # leftovers: an interrupted move of the hot partition's original, and a verbatim copy of a
        # cold original kept compact
        hot_uid = str(pydicom.dcmread(io.BytesIO(hot_only), stop_before_pixels=True).SOPInstanceUID)
        _, hot_form, hot_key = rows[("stays-hot", hot_uid)]
        stored_key = hot_key + (".dgwc" if hot_form == "compact" else "")
        await cold.put_bytes(stored_key, await hot.read(stored_key))
        compact_cold = next(k for (p, _), (_, form, k) in rows.items()
                            if p == "default" and form == "compact")
        await cold.put_bytes(compact_cold, corpus[0])
        report = await sweep_orphans(runtime, grace_seconds=0)
        removed = sorted(o.key for o in report.orphans if o.store == "cold" and o.action == "removed")
        assert removed == sorted([stored_key, compact_cold]), report.as_json()
        assert sorted([k async for k in cold.list_keys("originals/")]) == cold_keys
        assert not [o for o in report.orphans if o.store != "cold"], report.as_json()
        assert await tasks.verify(runtime, work_key("stays-hot", hot_uid)) == "verified"
