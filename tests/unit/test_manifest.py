"""A collection's manifest: rows from de-identified real-world files, CSV and Parquet alike, and the
file-by-file check a download runs."""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow.parquet as pq
import pydicom

from dicomgw.collections import manifest
from dicomgw.deid import burned_in_candidate, deidentify
from tests.dicomdata import deid_data_files, round_trip_corpus

KEY = b"manifest-test-key"


def _collection(root: Path) -> tuple[list[manifest.ManifestRow], list[str]]:
    """De-identified copies of the real-world image files that are not burned-in candidates."""
    rows, originals = [], []
    # pydicom reuses SOP Instance UIDs across its files: each gets its own, as in the archive
    for data in [*round_trip_corpus(), *(p.read_bytes() for p in deid_data_files())]:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        if "PixelData" not in ds or "SOPClassUID" not in ds or burned_in_candidate(ds):
            continue
        out = deidentify(ds, KEY)
        buffer = io.BytesIO()
        out.save_as(buffer, enforce_file_format=True)
        relative = f"{out.StudyInstanceUID}/{out.SeriesInstanceUID}/{out.SOPInstanceUID}.dcm"
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(buffer.getvalue())
        rows.append(manifest.row_for(out, buffer.getvalue(), relative))
        originals.append(str(ds.PatientID) if "PatientID" in ds else "")
    return rows, originals


def test_manifest_rows_round_trip_through_csv_and_parquet_and_verify_the_files(tmp_path: Path) -> None:
    root = tmp_path / "collection"
    rows, original_patients = _collection(root)
    assert len(rows) > 20
    csv_path, parquet_path = manifest.write(rows, root)
    ordered = sorted(rows, key=lambda r: r.path)
    assert manifest.read(csv_path) == ordered == manifest.read(parquet_path)
    table = pq.read_table(parquet_path)
    assert table.num_rows == len(rows) and "sha256" in table.column_names
    # pseudonymous identifiers only: no original patient ID and no lineage to the originals
    # (the UID, path and SHA-256 columns are digits and hex made afresh, where a short numeric ID can
    # appear by chance: the text columns are the ones that could carry one over)
    identifying = [p for p in original_patients if len(p) > 3]
    for row in manifest.read(csv_path):
        texts = (row.patient_id, row.series_description, row.body_part_examined)
        assert not [p for p in identifying for t in texts if p in t], row
    assert not [name for name in table.column_names if "original" in name]
    ct = next(r for r in rows if r.modality == "CT" and r.pixel_spacing)
    assert ct.rows > 0 and ct.columns > 0 and ct.frames >= 1 and "\\" in ct.pixel_spacing
    assert manifest.verify(root, ordered) == []
    # a changed byte and a missing file are both found
    victim, gone = root / ordered[0].path, root / ordered[1].path
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    victim.write_bytes(bytes(data))
    gone.unlink()
    assert manifest.verify(root, ordered) == [ordered[0].path, ordered[1].path]
