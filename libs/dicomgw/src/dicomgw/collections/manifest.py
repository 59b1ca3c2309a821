"""A collection's manifest: one row per de-identified instance, as CSV and Parquet, and its check.

What an AI pipeline needs to select and load data without opening every file: pseudonymous patient,
study, series and instance identifiers, modality, body part, series description, geometry, the
SHA-256 of the de-identified object (so a download can be verified file by file), and whether the
series is one regular volume. The SHA-256 of the original it came from is lineage, kept by the archive
for its administrators, never in a manifest.

Columns are only ever added at the end, each with a default: rows stored by an older build (JSON in
``collection_items.row_json``) still load, and readers that index columns by position keep working.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

MANIFEST = "manifest"


@dataclass(frozen=True)
class ManifestRow:
    path: str  # relative to the collection's root
    patient_id: str
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    modality: str
    body_part_examined: str
    series_description: str
    rows: int
    columns: int
    frames: int
    pixel_spacing: str  # row\column spacing in mm, as DICOM writes it
    slice_thickness: str
    sha256: str  # of the de-identified file
    # of the first frame, as DICOM writes them (an enhanced object's from its functional groups)
    image_position_patient: str = ""
    image_orientation_patient: str = ""
    # the series' flag, the same on each of its rows: what the client's planner (dicomgw_client.volume)
    # makes of all its frames, so that the flag and CollectionDataset agree: "volume" (one regular
    # stack), "stacks" (several, nothing irregular), "irregular" (some frames in no regular stack), "2d"
    # (no frame can be placed), "" (not known: an item built before the flag existed)
    geometry: str = ""
    geometry_detail: str = ""  # how many stacks, or why frames are irregular and how many


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, list | tuple | MultiValue):
        return "\\".join(str(v) for v in value)
    return str(value)


def _first_frame(ds: Dataset, sequence: str, keyword: str) -> str:
    """``keyword`` of the first frame: its per-frame functional group, then the shared one, then the
    top level. The top-level position is a multi-frame object's first frame only when it has one frame
    (as the planner reads it): otherwise its frames have no position of their own."""
    for groups in (ds.get("PerFrameFunctionalGroupsSequence"), ds.get("SharedFunctionalGroupsSequence")):
        if not groups or sequence not in groups[0]:
            continue
        items = groups[0][sequence].value
        if items and keyword in items[0]:
            return _text(items[0], keyword)
    if keyword == "ImagePositionPatient" and int(ds.get("NumberOfFrames") or 1) != 1:
        return ""
    return _text(ds, keyword)


def row_for(ds: Dataset, data: bytes, path: str) -> ManifestRow:
    """The manifest row of one de-identified instance whose file bytes are ``data``."""
    return ManifestRow(
        path=path, patient_id=_text(ds, "PatientID"), study_instance_uid=_text(ds, "StudyInstanceUID"),
        series_instance_uid=_text(ds, "SeriesInstanceUID"), sop_instance_uid=_text(ds, "SOPInstanceUID"),
        sop_class_uid=_text(ds, "SOPClassUID"), modality=_text(ds, "Modality"),
        body_part_examined=_text(ds, "BodyPartExamined"), series_description=_text(ds, "SeriesDescription"),
        rows=int(ds.get("Rows", 0) or 0), columns=int(ds.get("Columns", 0) or 0),
        frames=int(ds.get("NumberOfFrames", 1) or 1), pixel_spacing=_text(ds, "PixelSpacing"),
        slice_thickness=_text(ds, "SliceThickness"), sha256=hashlib.sha256(data).hexdigest(),
        image_position_patient=_first_frame(ds, "PlanePositionSequence", "ImagePositionPatient"),
        image_orientation_patient=_first_frame(ds, "PlaneOrientationSequence", "ImageOrientationPatient"))


def write(rows: list[ManifestRow], folder: Path) -> tuple[Path, Path]:
    """``manifest.csv`` and ``manifest.parquet`` in ``folder``, rows in path order."""
    folder.mkdir(parents=True, exist_ok=True)
    ordered = sorted(rows, key=lambda r: r.path)
    names = [f.name for f in fields(ManifestRow)]
    csv_path, parquet_path = folder / f"{MANIFEST}.csv", folder / f"{MANIFEST}.parquet"
    with open(csv_path, "w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=names)
        writer.writeheader()
        writer.writerows(asdict(r) for r in ordered)
    table = pa.Table.from_pylist([asdict(r) for r in ordered])
    pq.write_table(table, parquet_path)
    return csv_path, parquet_path


def read(path: Path) -> list[ManifestRow]:
    """The rows of a manifest, from its Parquet or CSV form."""
    if path.suffix == ".parquet":
        records = pq.read_table(path).to_pylist()
    else:
        with open(path, newline="", encoding="utf-8") as f:
            records = list(csv.DictReader(f))
    ints = {"rows", "columns", "frames"}
    out = []
    for record in records:
        values: dict[str, Any] = {k: int(v) if k in ints else str(v) for k, v in record.items()}
        out.append(ManifestRow(**values))
    return out


def verify(root: Path, rows: list[ManifestRow]) -> list[str]:
    """The paths whose file is missing or does not have the manifest's SHA-256 (empty: all intact)."""
    bad = []
    for row in rows:
        target = root / row.path
        if not target.is_file():
            bad.append(row.path)
            continue
        digest = hashlib.sha256()
        with open(target, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        if digest.hexdigest() != row.sha256:
            bad.append(row.path)
    return bad
