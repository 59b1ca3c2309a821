"""De-identification against the standard's own Table E.1-1, over real-world files.

The table comes from the dicom-standard package, not from dicomgw (tests/deidcheck.py): an attribute
the profile forgot fails here. Every element of every de-identified file is walked, nested sequences
included.
"""

from __future__ import annotations

import copy
import io
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from dicomgw.deid import Options, burned_in_candidate, deidentify
from tests import deidcheck
from tests.deidcheck import assert_deidentified
from tests.dicomdata import deid_data_files, pydicom_files

KEY, OTHER_KEY = b"collection-secret-1", b"collection-secret-2"


def _files() -> list[Path]:
    return [*pydicom_files(), *deid_data_files()]


@pytest.fixture(scope="module")
def table() -> list[dict[str, str]]:
    return deidcheck.table()


@pytest.mark.parametrize("path", _files(), ids=lambda p: p.name)
def test_no_attribute_the_basic_profile_removes_or_replaces_survives(
        path: Path, table: list[dict[str, str]]) -> None:
    original = pydicom.dcmread(path, force=True)
    if "PixelData" not in original or "SOPClassUID" not in original:
        pytest.skip("not an image instance")
    assert_deidentified(original, deidentify(original, KEY), table)


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


def test_clean_descriptors_keep_descriptions_that_name_nobody() -> None:
    """Clean Descriptors (PS3.15 E.3.5, code 113105): study and series descriptions and the protocol
    name are kept where they hold nothing of the original's identity, removed (not redacted) where
    they might."""
    from dicomgw.deid.profile import clean_descriptor

    path = next(p for p in _files() if p.name == "CT_small.dcm")
    original = pydicom.dcmread(path)
    original.PatientName, original.PatientID = "Smith^Joan", "MRN0042"
    original.InstitutionName = "St Elsewhere Hospital"
    original.StudyDescription = "CT HEAD W/O CONTRAST"
    original.SeriesDescription = "Smith head axial"
    original.ProtocolName = "Brain 2024-03-01"
    out = deidentify(original, KEY, Options(clean_descriptors=True))
    assert out.StudyDescription == "CT HEAD W/O CONTRAST"
    assert "SeriesDescription" not in out and "ProtocolName" not in out
    assert "113105" in [item.CodeValue for item in out.DeidentificationMethodCodeSequence]
    assert "StudyDescription" not in deidentify(original, KEY)  # only with the option
    words = {"smith", "joan", "mrn0042", "elsewhere"}
    for kept in ("T1 AX POST", "AX FLAIR", "CHEST PA/LAT"):
        assert clean_descriptor(kept, words) == kept
    for removed in ("joan's scan", "MRN0042 follow-up", "scan 03/01/24", "ref 123456", "at 10:15",
                    "call dr@example.org", "St Elsewhere CT"):
        assert clean_descriptor(removed, words) is None, removed


@pytest.mark.parametrize("path", _files(), ids=lambda p: p.name)
def test_clean_descriptors_keep_only_what_the_option_column_allows(
        path: Path, table: list[dict[str, str]]) -> None:
    """With the option, an attribute the Basic Profile removes may survive only where Table E.1-1's
    Clean Descriptors column says C (clean), and never with a word of the patient's name or ID."""
    original = pydicom.dcmread(path, force=True)
    if "PixelData" not in original or "SOPClassUID" not in original:
        pytest.skip("not an image instance")
    out = deidentify(original, KEY, Options(clean_descriptors=True))
    cleanable = {int(row["id"], 16) for row in table if row.get("cleanDescOpt") == "C"
                 and "x" not in row["id"].lower() and not row["id"].startswith("gggg")}
    name_words = {w.lower() for w in str(original.get("PatientName", "")).replace("^", " ").split()
                  if len(w) > 2}
    for tag, value in deidcheck.walk(out):
        for row in table:
            if deidcheck.matches(row["id"], tag) and row["basicProfile"] == "X":
                assert tag in cleanable, f"{row['name']} survived without being cleanable"
                assert not {w for w in str(value).lower().split()} & name_words, row["name"]


def test_enhanced_objects_keep_the_geometry_of_their_functional_groups_and_nothing_else(
        table: list[dict[str, str]]) -> None:
    """An enhanced CT keeps, per frame and shared, the macros that place and read its frames (position,
    orientation, pixel measures, rescale, window, frame content without its dates) and loses the rest
    (anatomy, irradiation event UIDs, frame dates and times), checked against Table E.1-1 as well."""
    path = Path(__import__("data_store").__file__).parent / "data" / "eCT_Supplemental.dcm"
    original = pydicom.dcmread(path)
    out = deidentify(original, KEY)
    assert_deidentified(original, out, table)
    shared, frames = out.SharedFunctionalGroupsSequence[0], out.PerFrameFunctionalGroupsSequence
    assert sorted(e.keyword for e in shared) == [
        "FrameVOILUTSequence", "PixelMeasuresSequence", "PixelValueTransformationSequence",
        "PlaneOrientationSequence"]
    assert shared.PixelValueTransformationSequence[0].RescaleIntercept == \
        original.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0].RescaleIntercept
    assert len(frames) == len(original.PerFrameFunctionalGroupsSequence) == 2
    for kept, was in zip(frames, original.PerFrameFunctionalGroupsSequence, strict=True):
        position = was.PlanePositionSequence[0].ImagePositionPatient
        assert kept.PlanePositionSequence[0].ImagePositionPatient == position
        assert kept.FrameContentSequence[0].InStackPositionNumber == \
            was.FrameContentSequence[0].InStackPositionNumber
    # what was there to remove: anatomy, and the irradiation event's UID (Table E.1-1)
    for macro in ("IrradiationEventIdentificationSequence", "FrameAnatomySequence"):
        assert macro in original.SharedFunctionalGroupsSequence[0] and macro not in shared
    # a frame's date and time, where a file has them, are removed with every attribute not listed
    dated = copy.deepcopy(original)
    content = dated.PerFrameFunctionalGroupsSequence[0].FrameContentSequence[0]
    content.FrameAcquisitionDateTime = "20240315101500"
    kept = deidentify(dated, KEY).PerFrameFunctionalGroupsSequence[0].FrameContentSequence[0]
    assert "FrameAcquisitionDateTime" not in kept and kept.StackID == content.StackID
