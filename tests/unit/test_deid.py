"""De-identification against the standard's own Table E.1-1, over real-world files.

The table comes from the dicom-standard package (Innolitics' extraction of PS3.15 Table E.1-1, 433
attributes with their Basic Profile actions), not from dicomgw: an attribute the profile forgot fails
here. Every element of every de-identified file is walked, nested sequences included.
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from dicomgw.deid import Options, burned_in_candidate, deidentify
from tests.dicomdata import deid_data_files, pydicom_files

TABLE_FILE = Path(sys.prefix) / "standard" / "confidentiality_profile_attributes.json"
KEY, OTHER_KEY = b"collection-secret-1", b"collection-secret-2"


def _table() -> list[dict[str, str]]:
    rows: list[dict[str, str]] = json.loads(TABLE_FILE.read_text())
    assert len(rows) > 400, "Table E.1-1 did not load"
    return rows


def _matches(table_id: str, tag: int) -> bool:
    """Whether a tag is one a table row names: an exact tag, a repeating group (50xx, 60xx) or the
    private tags (odd groups)."""
    group, element = tag >> 16, tag & 0xFFFF
    if table_id.startswith("gggg"):
        return group % 2 == 1
    if "x" in table_id.lower():
        hex_id = table_id.lower()
        pattern_group, pattern_element = hex_id[:4], hex_id[4:8]
        ok_group = all(p in ("x", c) for p, c in zip(pattern_group, f"{group:04x}", strict=True))
        ok_element = all(p in ("x", c) for p, c in zip(pattern_element, f"{element:04x}", strict=True))
        return ok_group and ok_element
    return int(table_id, 16) == tag


def _walk(ds: Dataset) -> Iterator[tuple[int, object]]:
    for element in ds:
        yield int(element.tag), element.value
        if element.VR == "SQ":
            for item in element.value:
                yield from _walk(item)


def _files() -> list[Path]:
    return [*pydicom_files(), *deid_data_files()]


@pytest.fixture(scope="module")
def table() -> list[dict[str, str]]:
    return _table()


@pytest.mark.parametrize("path", _files(), ids=lambda p: p.name)
def test_no_attribute_the_basic_profile_removes_or_replaces_survives(
        path: Path, table: list[dict[str, str]]) -> None:
    original = pydicom.dcmread(path, force=True)
    if "PixelData" not in original or "SOPClassUID" not in original:
        pytest.skip("not an image instance")
    out = deidentify(original, KEY)
    originals = {tag: value for tag, value in _walk(original)}
    for tag, value in _walk(out):
        for row in table:
            if not _matches(row["id"], tag):
                continue
            action = row["basicProfile"]
            name = f"{row['name']} ({row['tag']}) {action}"
            assert "X" != action, f"{name} must be removed, found {value!r}"
            if not value:
                continue  # zero-length: what Z and D allow
            if "U" in action:
                assert str(value).startswith("2.25.") and value != originals.get(tag), name
            else:
                # a dummy or pseudonym, never the original
                assert value != originals.get(tag) and str(value).startswith(("P-", "S-")), \
                    f"{name} kept {value!r}"
    assert not [tag for tag, _ in _walk(out) if (tag >> 16) % 2 == 1], "private tags remain"
    assert out.PatientIdentityRemoved == "YES"
    assert out.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    assert out.preamble == b"\0" * 128
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID != original.SOPInstanceUID
    assert out.PixelData == original.PixelData  # bit-identical pixels


def test_pseudonyms_are_stable_per_collection_key_and_differ_between_keys() -> None:
    path = next(p for p in deid_data_files() if p.name == "ctbrain1.dcm")
    sibling = next(p for p in deid_data_files() if p.name == "ctbrain2.dcm")
    ds, other = pydicom.dcmread(path), pydicom.dcmread(sibling)
    first, again, foreign = deidentify(ds, KEY), deidentify(ds, KEY), deidentify(ds, OTHER_KEY)
    for keyword in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "StudyID"):
        assert getattr(first, keyword) == getattr(again, keyword) != getattr(foreign, keyword), keyword
    # the same patient and study in another instance map to the same pseudonyms
    second = deidentify(other, KEY)
    assert second.PatientID == first.PatientID and second.StudyInstanceUID == first.StudyInstanceUID
    assert (second.SOPInstanceUID == first.SOPInstanceUID) == (other.SOPInstanceUID == ds.SOPInstanceUID)
    buffer = io.BytesIO()
    first.save_as(buffer, enforce_file_format=True)
    assert pydicom.dcmread(io.BytesIO(buffer.getvalue())).PatientName == first.PatientID


def test_options_retain_what_they_name_and_shift_dates_per_patient() -> None:
    path = next(p for p in deid_data_files() if p.name == "ctbrain1.dcm")
    ds = pydicom.dcmread(path)
    plain = deidentify(ds, KEY)
    assert plain.StudyDate == "" and plain.PatientSex == ""
    kept = deidentify(ds, KEY, Options(patient_characteristics=True, longitudinal_modified_dates=True))
    if ds.get("PatientSex"):
        assert kept.PatientSex == ds.PatientSex
    assert kept.StudyDate and kept.StudyDate != ds.StudyDate
    assert kept.LongitudinalTemporalInformationModified == "MODIFIED"
    assert [i.CodeValue for i in kept.DeidentificationMethodCodeSequence] == ["113100", "113108", "113107"]


def test_burned_in_candidates_are_recognised() -> None:
    by_name = {p.name: pydicom.dcmread(p, stop_before_pixels=True) for p in [*deid_data_files(),
                                                                             *pydicom_files()]}
    assert burned_in_candidate(by_name["GREYSCALE_IMAGE.dcm"])  # ultrasound, BurnedInAnnotation YES
    assert burned_in_candidate(by_name["RGB_IMAGE.dcm"])  # ultrasound, nothing said
    assert burned_in_candidate(by_name["ctbrain1.dcm"])  # a secondary capture, nothing said
    assert not burned_in_candidate(by_name["cat.dcm"])  # DX saying NO
    assert not burned_in_candidate(by_name["CT_small.dcm"])
    said_no = Dataset()
    said_no.Modality, said_no.BurnedInAnnotation = "US", "NO"
    assert not burned_in_candidate(said_no)
    said_yes = Dataset()
    said_yes.Modality, said_yes.BurnedInAnnotation = "CT", "YES"
    assert burned_in_candidate(said_yes)
