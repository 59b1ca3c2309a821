"""`dicomgw smoke`: store a generated instance, find it by QIDO, fetch it byte-exact by WADO.

Used by the chart's `helm test`; the three URLs may be one (behind a router) or one per service.
Credentials: `--token` (an API key or access token), or `--ephemeral-key`, which creates a read/write
key that expires in 15 minutes in the index the DICOMGW_* settings name and revokes it afterwards
(the chart's test pod has those settings; nobody has to hand it a key).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import secrets
from datetime import UTC, datetime, timedelta

import httpx
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


def _instance() -> tuple[Dataset, bytes]:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = (generate_uid() for _ in range(3))
    ds.PatientName, ds.PatientID, ds.Modality = "Smoke^Test", "DICOMGW-SMOKE", "OT"
    ds.Rows = ds.Columns = 16
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = np.arange(256, dtype=np.uint8).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return ds, buf.getvalue()


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("smoke", help="STOW, QIDO and WADO round trip of a generated instance")
    parser.add_argument("--url", help="DICOMweb root for all three (behind a router)")
    parser.add_argument("--stow-url")
    parser.add_argument("--qido-url")
    parser.add_argument("--wado-url")
    parser.add_argument("--token", default=os.environ.get("DICOMGW_TOKEN"),
                        help="API key or access token (default: $DICOMGW_TOKEN)")
    parser.add_argument("--ephemeral-key", action="store_true",
                        help="create a 15-minute read/write key in the configured index, revoke it after")
    parser.set_defaults(func=run)


async def _keys(action: str, name: str) -> str:
    from dicomgw.auth import READ, WRITE
    from dicomgw.auth.keys import ApiKeys
    from dicomgw.config import Settings
    from dicomgw.index.db import create_engine

    settings = Settings()
    engine = create_engine(settings.index_url, pool_size=1)
    try:
        keys = ApiKeys(engine, settings.auth.key_secret)
        if action == "create":
            key, _ = await keys.create(name, {READ, WRITE}, datetime.now(UTC) + timedelta(minutes=15))
            return key
        await keys.revoke(name)
        return ""
    finally:
        await engine.dispose()


def run(args: argparse.Namespace) -> int:
    stow_url = args.stow_url or args.url
    qido_url = args.qido_url or args.url
    wado_url = args.wado_url or args.url
    if not (stow_url and qido_url and wado_url):
        print("give --url, or all of --stow-url, --qido-url and --wado-url")
        return 2
    name = f"smoke-test-{secrets.token_hex(4)}"
    token = asyncio.run(_keys("create", name)) if args.ephemeral_key else args.token
    try:
        return _round_trip(stow_url, qido_url, wado_url, token)
    finally:
        if args.ephemeral_key:
            asyncio.run(_keys("revoke", name))


def _round_trip(stow_url: str, qido_url: str, wado_url: str, token: str | None) -> int:
    ds, data = _instance()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(timeout=60, headers=headers) as client:
        stored = client.post(f"{stow_url}/studies", content=data,
                             headers={"content-type": "application/dicom"})
        if stored.status_code != 200:
            print(f"STOW-RS failed: {stored.status_code} {stored.text[:500]}")
            return 1
        found = client.get(f"{qido_url}/studies/{ds.StudyInstanceUID}/instances").json()
        if [i["00080018"]["Value"][0] for i in found] != [ds.SOPInstanceUID]:
            print(f"QIDO-RS did not find the instance: {found}")
            return 1
        got = client.get(
            f"{wado_url}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}",
            headers={"accept": "application/dicom; transfer-syntax=*"},
        )
        if got.content != data:
            print(f"WADO-RS returned other bytes ({got.status_code}, {len(got.content)} bytes)")
            return 1
    print("smoke test passed: STOW-RS, QIDO-RS and WADO-RS round trip is byte-exact")
    return 0
