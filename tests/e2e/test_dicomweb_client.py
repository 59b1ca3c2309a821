"""dicomweb-client (what research groups script with) stores, searches and retrieves against the gateway."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.uid import JPEGLSLossless

from tests.dicomdata import make_dataset, pydicom_files, to_bytes, uid
from tests.fixtures.gateway import Gateway


@pytest.fixture(scope="module", params=["embedded", "stack"])
def client(request: pytest.FixtureRequest) -> DICOMwebClient:
    """The embedded gateway, and the split services behind the nginx router."""
    if request.param == "stack":
        return DICOMwebClient(url=request.getfixturevalue("stack").config.url)
    gateway: Gateway = request.getfixturevalue("gateway")
    return DICOMwebClient(url=gateway.url)


@pytest.fixture(scope="module")
def study(client: DICOMwebClient) -> list[pydicom.Dataset]:
    study_uid, series_uid = uid(), uid()
    datasets = [make_dataset(study_uid=study_uid, series_uid=series_uid, instance_number=i + 1,
                             patient_name="Client^Research", patient_id="DWC-1", frames=2, seed=i,
                             modality="MR", sop_class_uid="1.2.840.10008.5.1.4.1.1.4")
                for i in range(3)]
    response = client.store_instances(datasets)
    assert len(response.ReferencedSOPSequence) == 3
    assert "FailedSOPSequence" not in response
    return datasets


def test_search_at_every_level(client: DICOMwebClient, study: list[pydicom.Dataset]) -> None:
    ds = study[0]
    studies = client.search_for_studies(search_filters={"PatientID": "DWC-1"})
    assert [s["0020000D"]["Value"][0] for s in studies] == [ds.StudyInstanceUID]
    fuzzy = client.search_for_studies(search_filters={"PatientName": "resea"}, fuzzymatching=True)
    assert ds.StudyInstanceUID in {s["0020000D"]["Value"][0] for s in fuzzy}
    series = client.search_for_series(ds.StudyInstanceUID)
    assert series[0]["00201209"]["Value"] == [3]
    instances = client.search_for_instances(ds.StudyInstanceUID, ds.SeriesInstanceUID,
                                            fields=["NumberOfFrames"], limit=2, offset=1)
    assert len(instances) == 2
    assert instances[0]["00280008"]["Value"] == [2]


def test_retrieve_instances_byte_exact(client: DICOMwebClient, study: list[pydicom.Dataset]) -> None:
    ds = study[1]
    got = client.retrieve_instance(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID,
                                   media_types=(("application/dicom", "*"),))
    assert to_bytes(got) == to_bytes(ds)
    whole = client.retrieve_study(ds.StudyInstanceUID)
    assert sorted(d.SOPInstanceUID for d in whole) == sorted(d.SOPInstanceUID for d in study)
    for d in whole:
        original = next(o for o in study if o.SOPInstanceUID == d.SOPInstanceUID)
        assert d.PixelData == original.PixelData


def test_metadata_frames_and_bulkdata(client: DICOMwebClient, study: list[pydicom.Dataset]) -> None:
    ds = study[2]
    meta = client.retrieve_instance_metadata(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert meta["00100010"]["Value"][0]["Alphabetic"] == "Client^Research"
    frames = client.retrieve_instance_frames(ds.StudyInstanceUID, ds.SeriesInstanceUID,
                                             ds.SOPInstanceUID, frame_numbers=[2, 1])
    size = len(ds.PixelData) // 2
    assert frames == [ds.PixelData[size:], ds.PixelData[:size]]
    bulk = client.retrieve_bulkdata(meta["7FE00010"]["BulkDataURI"])
    assert b"".join(bulk) == ds.PixelData
    series_meta = client.retrieve_series_metadata(ds.StudyInstanceUID, ds.SeriesInstanceUID)
    assert len(series_meta) == 3


def test_compressed_frames_as_stored_and_decoded(client: DICOMwebClient) -> None:
    source = next(p for p in pydicom_files() if p.name == "MR_small_jpeg_ls_lossless.dcm")
    ds = pydicom.dcmread(source)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = uid(), uid(), uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    client.store_instances([ds])
    stored = client.retrieve_instance_frames(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID,
                                             frame_numbers=[1], media_types=(("image/jls", JPEGLSLossless),))
    from pydicom.encaps import generate_frames

    assert stored[0].rstrip(b"\0") == next(generate_frames(ds.PixelData, number_of_frames=1)).rstrip(b"\0")
    plain = client.retrieve_instance_frames(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID,
                                            frame_numbers=[1])
    assert np.frombuffer(plain[0], dtype="<i2").reshape(ds.Rows, ds.Columns).tolist() == \
        ds.pixel_array.tolist()


def test_rendered(client: DICOMwebClient, study: list[pydicom.Dataset]) -> None:
    from PIL import Image

    ds = study[0]
    jpeg = client.retrieve_instance_rendered(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID,
                                             media_types=("image/jpeg",))
    assert Image.open(io.BytesIO(jpeg)).size == (ds.Columns, ds.Rows)
