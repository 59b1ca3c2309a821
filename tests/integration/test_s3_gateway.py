"""The embedded gateway on MinIO instead of a local folder: same behaviour, originals in the bucket."""

from __future__ import annotations

import io
import uuid

import httpx
import pydicom

from tests.dicomdata import make_study, multipart_related, split_multipart
from tests.fixtures.minio import MinioServer


def test_stow_qido_wado_round_trip_on_minio(make_gateway, minio_server: MinioServer) -> None:  # type: ignore[no-untyped-def]
    bucket = "gw-" + uuid.uuid4().hex[:12]
    gw = make_gateway(env=minio_server.env(bucket))
    parts = make_study(2, 2, rows=128, columns=128, frames=3)
    body, ct = multipart_related(parts)
    resp = httpx.post(f"{gw.url}/studies", content=body, headers={"content-type": ct}, timeout=60)
    assert resp.status_code == 200, resp.text
    study = resp.json()["00081190"]["Value"][0]
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
    got = httpx.get(study, headers={"accept": accept})
    assert sorted(p for _, p in split_multipart(got.content, got.headers["content-type"])) == sorted(parts)
    ds = pydicom.dcmread(io.BytesIO(parts[0]))
    frame = httpx.get(f"{study}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}/frames/3",
                      headers={"accept": "multipart/related; type=application/octet-stream"})
    [(_, data)] = split_multipart(frame.content, frame.headers["content-type"])
    size = 128 * 128 * 2
    assert data == ds.PixelData[2 * size : 3 * size]
    found = httpx.get(f"{gw.url}/studies", params={"StudyInstanceUID": ds.StudyInstanceUID}).json()
    assert found[0]["00201208"]["Value"] == [4]
    # the bytes really are in the bucket, under content-addressed keys
    objects = [o for o in (minio_server.data_dir / bucket).rglob("*") if o.name == "xl.meta"]
    assert len(objects) == 4
