"""dicomweb-client (what research groups script with) stores, searches and retrieves against the gateway."""

from __future__ import annotations

import io
import secrets
from typing import Any

import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, JPEGLSLossless, MRImageStorage
from requests import HTTPError

from tests.dicomdata import make_dataset, pydicom_files, to_bytes, uid
from tests.fixtures.gateway import Gateway

EXPLICIT_VR_LE = str(ExplicitVRLittleEndian)


@pytest.fixture(scope="module", params=["embedded", "stack"])
def client(request: pytest.FixtureRequest) -> DICOMwebClient:
    """The embedded gateway, and the split services behind the nginx router."""
    if request.param == "stack":
        stack = request.getfixturevalue("stack")
        # dicomweb-client with a bearer credential, as a research pipeline uses it
        return DICOMwebClient(url=stack.config.url, headers=stack.headers)
    gateway: Gateway = request.getfixturevalue("gateway")
    return DICOMwebClient(url=gateway.url)


@pytest.fixture(scope="module")
def study(client: DICOMwebClient) -> list[Dataset]:
    """One MR series of three two-frame instances, stored with store_instances."""
    study_uid, series_uid = uid(), uid()
    datasets = [make_dataset(study_uid=study_uid, series_uid=series_uid, instance_number=i + 1,
                             patient_name="Client^Research", patient_id="DWC-1", frames=2, seed=i,
                             modality="MR", sop_class_uid=MRImageStorage)
                for i in range(3)]
    response = client.store_instances(datasets)
    assert len(response.ReferencedSOPSequence) == 3
    assert "FailedSOPSequence" not in response
    return datasets


@pytest.fixture(scope="module")
def cohort(client: DICOMwebClient) -> list[Dataset]:
    """Three one-instance studies of one patient, on different dates and modalities."""
    patient = "DWC-" + secrets.token_hex(4).upper()
    specs = [("20230105", "CT", "Alpha^Anna"), ("20230610", "MR", "Beta^Bert"),
             ("20240220", "CT", "Gamma^Gus")]
    datasets = [make_dataset(patient_id=patient, study_date=date, modality=modality, patient_name=name,
                             study_description=f"Cohort {i}", accession=f"{patient[-6:]}{i}",
                             sop_class_uid=MRImageStorage if modality == "MR" else CTImageStorage)
                for i, (date, modality, name) in enumerate(specs)]
    response = client.store_instances(datasets)
    assert len(response.ReferencedSOPSequence) == 3
    return datasets


def _study_uids(results: list[dict[str, dict]]) -> list[str]:  # type: ignore[type-arg]
    return [r["0020000D"]["Value"][0] for r in results]


def _value(result: dict[str, dict], tag: str) -> Any:  # type: ignore[type-arg]
    return result[tag]["Value"][0]


# --- STOW-RS ------------------------------------------------------------------------------------------

def test_store_to_a_named_study_refuses_other_studies(client: DICOMwebClient) -> None:
    ds = make_dataset()
    with pytest.raises(HTTPError) as refused:
        client.store_instances([ds], study_instance_uid=uid())
    response = refused.value.response
    assert response is not None and response.status_code == 409
    failed = response.json()["00081198"]["Value"][0]
    assert failed["00081197"]["Value"] == [0xA900]
    stored = client.store_instances([ds], study_instance_uid=ds.StudyInstanceUID)
    assert stored.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == ds.SOPInstanceUID
    again = client.store_instances([ds])  # an identical re-send is a success
    assert again.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == ds.SOPInstanceUID


# --- QIDO-RS ------------------------------------------------------------------------------------------

def test_search_studies_with_filters(client: DICOMwebClient, cohort: list[Dataset]) -> None:
    patient = cohort[0].PatientID
    uids = [d.StudyInstanceUID for d in cohort]
    every = client.search_for_studies(search_filters={"PatientID": patient})
    assert sorted(_study_uids(every)) == sorted(uids)
    in_2023 = client.search_for_studies(search_filters={"PatientID": patient,
                                                        "StudyDate": "20230101-20231231"})
    assert sorted(_study_uids(in_2023)) == sorted(uids[:2])
    ct = client.search_for_studies(search_filters={"PatientID": patient, "ModalitiesInStudy": "CT"})
    assert sorted(_study_uids(ct)) == sorted([uids[0], uids[2]])
    listed = client.search_for_studies(search_filters={"StudyInstanceUID": f"{uids[0]}\\{uids[2]}"})
    assert sorted(_study_uids(listed)) == sorted([uids[0], uids[2]])
    wildcard = client.search_for_studies(search_filters={"PatientID": patient, "PatientName": "bet*"})
    assert _study_uids(wildcard) == [uids[1]]  # wildcard, and person names case-insensitive
    fuzzy = client.search_for_studies(search_filters={"PatientID": patient, "PatientName": "gus"},
                                      fuzzymatching=True)
    assert _study_uids(fuzzy) == [uids[2]]
    exact = client.search_for_studies(search_filters={"PatientID": patient, "PatientName": "gus"})
    assert exact == []


def test_study_results_carry_default_computed_and_included_attributes(
        client: DICOMwebClient, cohort: list[Dataset]) -> None:
    ds = cohort[1]
    [result] = client.search_for_studies(search_filters={"StudyInstanceUID": ds.StudyInstanceUID},
                                         fields=["StudyDescription", "00100030"])
    assert _value(result, "00081030") == "Cohort 1"  # includefield by keyword
    assert _value(result, "00100030") == "19700101"  # includefield by tag
    assert result["00100010"]["Value"][0]["Alphabetic"] == "Beta^Bert"
    assert _value(result, "00080050") == ds.AccessionNumber
    assert _value(result, "00080061") == "MR"  # ModalitiesInStudy
    assert _value(result, "00201206") == 1  # NumberOfStudyRelatedSeries
    assert _value(result, "00201208") == 1  # NumberOfStudyRelatedInstances
    assert str(_value(result, "00081190")).endswith(f"/studies/{ds.StudyInstanceUID}")


def test_search_pages_with_limit_and_offset(client: DICOMwebClient, cohort: list[Dataset]) -> None:
    filters = {"PatientID": cohort[0].PatientID}
    first = client.search_for_studies(search_filters=filters, limit=2, offset=0)
    rest = client.search_for_studies(search_filters=filters, limit=2, offset=2)
    assert len(first) == 2 and len(rest) == 1
    assert sorted(_study_uids(first) + _study_uids(rest)) == sorted(d.StudyInstanceUID for d in cohort)
    paged = client.search_for_studies(search_filters=filters, limit=1, get_remaining=True)
    assert sorted(_study_uids(paged)) == sorted(d.StudyInstanceUID for d in cohort)


def test_search_series_and_instances(client: DICOMwebClient, study: list[Dataset]) -> None:
    ds = study[0]
    series = client.search_for_series(ds.StudyInstanceUID)
    assert [_value(s, "0020000E") for s in series] == [ds.SeriesInstanceUID]
    assert _value(series[0], "00080060") == "MR"
    assert _value(series[0], "00201209") == 3  # NumberOfSeriesRelatedInstances
    assert client.search_for_series(ds.StudyInstanceUID, search_filters={"Modality": "CT"}) == []
    anywhere = client.search_for_series(search_filters={"SeriesInstanceUID": ds.SeriesInstanceUID})
    assert [_value(s, "0020000D") for s in anywhere] == [ds.StudyInstanceUID]

    instances = client.search_for_instances(ds.StudyInstanceUID, ds.SeriesInstanceUID,
                                            fields=["NumberOfFrames"], limit=2, offset=1)
    assert len(instances) == 2
    assert all(_value(i, "00280008") == 2 for i in instances)
    every = client.search_for_instances(ds.StudyInstanceUID)
    assert sorted(_value(i, "00080018") for i in every) == sorted(d.SOPInstanceUID for d in study)
    one = client.search_for_instances(search_filters={"SOPInstanceUID": study[2].SOPInstanceUID})
    assert [_value(i, "00200013") for i in one] == [3]
    assert _value(one[0], "00080016") == MRImageStorage


@pytest.mark.parametrize(("charset", "name", "query"), [
    ("ISO_IR 192", "Müller^Jürgen", "MÜLLER*"),
    ("ISO_IR 100", "Ångström^Åsa", "ångström^åsa"),
    ("\\ISO 2022 IR 149", "Hong^Gildong=洪^吉洞=홍^길동", "홍^길동"),
    ("\\ISO 2022 IR 87", "Yamada^Tarou=山田^太郎=やまだ^たろう", "山田^太郎"),
    ("GB18030", "Wang^XiaoDong=王^小东", "王^小东"),
    ("ISO_IR 144", "Иванов^Иван", "иванов*"),
])
def test_names_in_other_character_sets_are_found_and_returned(
        client: DICOMwebClient, charset: str, name: str, query: str) -> None:
    patient = "DWC-CS-" + secrets.token_hex(4)
    ds = make_dataset(charset=charset, patient_name=name, patient_id=patient)
    client.store_instances([ds])
    found = client.search_for_studies(search_filters={"PatientID": patient, "PatientName": query})
    assert _study_uids(found) == [ds.StudyInstanceUID]
    groups = found[0]["00100010"]["Value"][0]
    assert "=".join(groups.get(k, "") for k in ("Alphabetic", "Ideographic", "Phonetic")).rstrip("=") \
        == name
    meta = client.retrieve_instance_metadata(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert meta["00100010"]["Value"][0] == groups


# --- WADO-RS ------------------------------------------------------------------------------------------

def test_retrieve_instances_series_and_study(client: DICOMwebClient, study: list[Dataset]) -> None:
    ds = study[1]
    got = client.retrieve_instance(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert to_bytes(got) == to_bytes(ds)
    originals = {d.SOPInstanceUID: to_bytes(d) for d in study}
    for whole in (client.retrieve_study(ds.StudyInstanceUID),
                  client.retrieve_series(ds.StudyInstanceUID, ds.SeriesInstanceUID)):
        assert {d.SOPInstanceUID: to_bytes(d) for d in whole} == originals


def test_compressed_instance_as_stored_and_decompressed(client: DICOMwebClient) -> None:
    source = next(p for p in pydicom_files() if p.name == "MR_small_jpeg_ls_lossless.dcm")
    ds = pydicom.dcmread(source)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = uid(), uid(), uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    client.store_instances([ds])
    ids = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)

    as_stored = client.retrieve_instance(*ids)  # dicomweb-client asks for transfer-syntax=*
    assert as_stored.file_meta.TransferSyntaxUID == JPEGLSLossless
    assert as_stored.PixelData == ds.PixelData
    decoded = client.retrieve_instance(*ids, media_types=(("application/dicom", EXPLICIT_VR_LE),))
    assert decoded.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert np.array_equal(decoded.pixel_array, ds.pixel_array)

    stored_frame = client.retrieve_instance_frames(*ids, frame_numbers=[1],
                                                   media_types=(("image/jls", JPEGLSLossless),))
    expected = next(generate_frames(ds.PixelData, number_of_frames=1))
    assert stored_frame[0].rstrip(b"\0") == expected.rstrip(b"\0")
    for media_types in (None, (("application/octet-stream", EXPLICIT_VR_LE),)):
        [plain] = client.retrieve_instance_frames(*ids, frame_numbers=[1], media_types=media_types)
        pixels = np.frombuffer(plain, dtype="<i2").reshape(ds.Rows, ds.Columns)
        assert np.array_equal(pixels, ds.pixel_array)


def test_metadata_and_bulkdata(client: DICOMwebClient, study: list[Dataset]) -> None:
    ds = study[2]
    meta = client.retrieve_instance_metadata(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert meta["00100010"]["Value"][0]["Alphabetic"] == "Client^Research"
    assert meta["00080018"]["Value"] == [ds.SOPInstanceUID]
    assert meta["00280010"]["Value"] == [ds.Rows]
    rebuilt = Dataset.from_json(meta, bulk_data_uri_handler=lambda tag, vr, url: b"".join(
        client.retrieve_bulkdata(url)))
    assert rebuilt.PixelData == ds.PixelData
    assert rebuilt.PatientName == ds.PatientName and rebuilt.WindowCenter == ds.WindowCenter
    octets = client.retrieve_bulkdata(meta["7FE00010"]["BulkDataURI"],
                                      media_types=("application/octet-stream",))
    assert b"".join(octets) == ds.PixelData
    series_meta = client.retrieve_series_metadata(ds.StudyInstanceUID, ds.SeriesInstanceUID)
    study_meta = client.retrieve_study_metadata(ds.StudyInstanceUID)
    for found in (series_meta, study_meta):
        assert sorted(m["00080018"]["Value"][0] for m in found) == sorted(d.SOPInstanceUID for d in study)


def test_frames_default_and_explicit_media_types(client: DICOMwebClient, study: list[Dataset]) -> None:
    ds = study[0]
    ids = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    size = len(ds.PixelData) // 2
    halves = {1: ds.PixelData[:size], 2: ds.PixelData[size:]}
    assert client.retrieve_instance_frames(*ids, frame_numbers=[2, 1]) == [halves[2], halves[1]]
    for media_types in ((("application/octet-stream", EXPLICIT_VR_LE),),
                        (("application/octet-stream", "*"),), ("application/octet-stream",)):
        assert client.retrieve_instance_frames(*ids, frame_numbers=[1], media_types=media_types) == \
            [halves[1]]
    with pytest.raises(HTTPError) as past_the_end:
        client.retrieve_instance_frames(*ids, frame_numbers=[3])
    response = past_the_end.value.response
    assert response is not None and response.status_code == 404


def _windowed(pixels: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 linear VOI to 0..255, written here independently of the gateway."""
    scaled = ((pixels.astype(np.float64) - (center - 0.5)) / (width - 1) + 0.5) * 255
    return np.clip(scaled, 0, 255)


def test_rendered_instance_and_frames(client: DICOMwebClient, study: list[Dataset]) -> None:
    ds = study[0]
    ids = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    frames = np.frombuffer(ds.PixelData, dtype="<u2").reshape(2, ds.Rows, ds.Columns)
    jpeg = Image.open(io.BytesIO(client.retrieve_instance_rendered(*ids, media_types=("image/jpeg",))))
    assert (jpeg.format, jpeg.size) == ("JPEG", (ds.Columns, ds.Rows))
    png = client.retrieve_instance_frames_rendered(*ids, frame_numbers=[2], media_types=("image/png",))
    image = np.asarray(Image.open(io.BytesIO(png)))
    expected = _windowed(frames[1], float(ds.WindowCenter), float(ds.WindowWidth))
    assert image.shape == expected.shape
    assert np.abs(image.astype(np.float64) - expected).max() <= 1.0
    narrow = client.retrieve_instance_rendered(*ids, media_types=("image/png",),
                                               params={"window": "300,200"})
    got = np.asarray(Image.open(io.BytesIO(narrow))).astype(np.float64)
    assert np.abs(got - _windowed(frames[0], 300, 200)).max() <= 1.0
