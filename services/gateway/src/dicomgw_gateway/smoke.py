"""`dicomgw smoke`: store a generated instance, find it by QIDO, fetch it byte-exact by WADO.

Used by the chart's `helm test`; the three URLs may be one (behind a router) or one per service.
"""

from __future__ import annotations

import argparse
import io

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
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    stow_url = args.stow_url or args.url
    qido_url = args.qido_url or args.url
    wado_url = args.wado_url or args.url
    if not (stow_url and qido_url and wado_url):
        print("give --url, or all of --stow-url, --qido-url and --wado-url")
        return 2
    ds, data = _instance()
    with httpx.Client(timeout=60) as client:
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
