"""Synthetic DICOM instances for tests (no PHI): studies, series, charsets, multi-frame, any syntax."""

from __future__ import annotations

import functools
import io
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

PREFIX = "1.2.826.0.1.3680043.10.1234."  # a test root; generate_uid adds a random suffix


def uid() -> str:
    return generate_uid(prefix=PREFIX)


def make_dataset(
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    sop_class_uid: str = CTImageStorage,
    modality: str = "CT",
    patient_name: str = "Doe^Jane",
    patient_id: str = "PID-1",
    study_date: str = "20240115",
    study_time: str = "101500",
    accession: str = "ACC1",
    study_description: str = "Test study",
    series_description: str = "Test series",
    series_number: int = 1,
    instance_number: int = 1,
    rows: int = 64,
    columns: int = 64,
    frames: int = 1,
    bits: int = 16,
    charset: str | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
    seed: int = 0,
    extra: dict[str, object] | None = None,
) -> Dataset:
    ds = Dataset()
    if charset:
        ds.SpecificCharacterSet = charset
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_uid or uid()
    ds.StudyInstanceUID = study_uid or uid()
    ds.SeriesInstanceUID = series_uid or uid()
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyDate = study_date
    ds.StudyTime = study_time
    ds.AccessionNumber = accession
    ds.StudyID = "1"
    ds.ReferringPhysicianName = "Ref^Doctor"
    ds.StudyDescription = study_description
    ds.Modality = modality
    ds.SeriesNumber = series_number
    ds.SeriesDescription = series_description
    ds.InstanceNumber = instance_number
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    rng = np.random.default_rng(seed)
    dtype = np.uint16 if bits == 16 else np.uint8
    ramp = (np.arange(rows * columns * frames) % (2 ** min(bits, 12))).astype(dtype)
    noise = rng.integers(0, 16, size=ramp.shape, dtype=dtype)
    ds.PixelData = (ramp + noise).tobytes()
    ds.WindowCenter = 2048 if bits == 16 else 128
    ds.WindowWidth = 4096 if bits == 16 else 256
    for keyword, value in (extra or {}).items():
        setattr(ds, keyword, value)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = transfer_syntax
    ds.file_meta = meta
    return ds


def to_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    implicit = ds.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    ds.save_as(buf, enforce_file_format=True, implicit_vr=implicit, little_endian=True)
    return buf.getvalue()


def make_instance(**kwargs: object) -> bytes:
    return to_bytes(make_dataset(**kwargs))  # type: ignore[arg-type]


def make_study(n_series: int = 2, per_series: int = 3, **kwargs: object) -> list[bytes]:
    study_uid = str(kwargs.pop("study_uid", None) or uid())
    out = []
    modalities = ["CT", "MR", "PT", "SR"]
    for s in range(n_series):
        series_uid = uid()
        modality = str(kwargs.get("modality") or modalities[s % 2])
        sop_class = MRImageStorage if modality == "MR" else CTImageStorage
        for i in range(per_series):
            args = {"sop_class_uid": sop_class, **kwargs, "modality": modality}
            out.append(make_instance(study_uid=study_uid, series_uid=series_uid,
                                     series_number=s + 1, instance_number=i + 1, seed=s * 100 + i,
                                     **args))
    return out


@functools.lru_cache(maxsize=1)
def pydicom_files() -> list[Path]:
    """pydicom's bundled test files that are PS3.10 files with the four UIDs STOW needs.

    Globbed from the package folder: pydicom's get_testdata_files() also tries to download extra
    files, which on a closed network costs ~15 s a call.
    """
    import pydicom.data

    folder = Path(pydicom.data.__file__).parent / "test_files"
    out = []
    for name in sorted(folder.rglob("*.dcm")):
        try:
            ds = pydicom.dcmread(name, stop_before_pixels=True)
        except Exception:
            continue
        if all(k in ds for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
                                  "SOPClassUID")) and "TransferSyntaxUID" in ds.file_meta:
            if Path(name).name in {"SC_rgb_jpeg.dcm", "MR_truncated.dcm", "badVR.dcm",
                                   "rtplan_truncated.dcm"}:
                continue  # malformed on purpose
            out.append(Path(name))
    return out


def multipart_related(parts: Iterable[bytes], boundary: str = "dicomgw-test-boundary",
                      content_type: str = "application/dicom") -> tuple[bytes, str]:
    """A multipart/related body and its Content-Type header value."""
    chunks = []
    for part in parts:
        chunks.append(f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode())
        chunks.append(part)
        chunks.append(b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    header = f'multipart/related; type="{content_type}"; boundary={boundary}'
    return b"".join(chunks), header


def with_fresh_sop_uid(data: bytes) -> bytes:
    """The same file with a new SOP Instance UID of the same length, every other byte unchanged.

    pydicom's test files reuse SOP Instance UIDs across transfer syntaxes; an archive rightly refuses
    the second one (0x0111), so round-trip tests give each file its own identity this way.
    """
    import io
    import secrets

    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    old = str(ds.SOPInstanceUID).encode()
    deflated = ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1.99"
    if len(old) < 10 or data.count(old) == 0 or deflated:
        # a deflated dataset hides its UID: keep the file whole (storing it twice is an identical
        # re-send) rather than change the meta group alone
        return data
    digits = str(secrets.randbelow(9) + 1) + "".join(
        str(secrets.randbelow(10)) for _ in range(len(old) - 6)
    )
    new = b"2.25." + digits.encode()
    assert len(new) == len(old)
    return data.replace(old, new)


def deid_data_files() -> list[Path]:
    """The de-identification project's real-world-like test files (deid-data on PyPI): CT brains, an
    animal, ultrasound (grey, RGB, multi-frame) and the dicom-cookies set."""
    import deid_data

    return sorted(Path(deid_data.__file__).parent.rglob("*.dcm"))


def round_trip_corpus() -> list[bytes]:
    """pydicom's test files (every transfer syntax they cover), each with its own SOP Instance UID."""
    return [with_fresh_sop_uid(p.read_bytes()) for p in pydicom_files()]


def split_multipart(body: bytes, content_type: str) -> list[tuple[dict[str, str], bytes]]:
    """Parts of a multipart/related body: (headers with lower-case names, payload)."""
    from dicomgw.multipart import parse_media_type

    media, params = parse_media_type(content_type)
    assert media == "multipart/related", content_type
    delimiter = b"--" + params["boundary"].encode()
    parts = []
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, payload = chunk.partition(b"\r\n\r\n")
        headers = {}
        for line in head.strip().split(b"\r\n"):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if payload.endswith(b"\r\n"):
            payload = payload[:-2]
        parts.append((headers, payload))
    return parts
