"""WADO-RS against a real gateway: byte-exact originals, frames, metadata, bulk data, rendered images."""

from __future__ import annotations

import io
import json

import httpx
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import generate_frames

from tests.dicomdata import make_instance, make_study, multipart_related, round_trip_corpus, split_multipart
from tests.fixtures.gateway import Gateway

ANY_TS = 'multipart/related; type="application/dicom"; transfer-syntax=*'
FRAMES_AS_STORED = "multipart/related; type=application/octet-stream; transfer-syntax=*"


def _ds(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data))


@pytest.fixture(scope="module")
def corpus(gateway: Gateway) -> dict[str, bytes]:
    """Every file of the round-trip corpus stored once; SOP Instance UID -> original bytes."""
    parts = round_trip_corpus()
    body, ct = multipart_related(parts)
    resp = httpx.post(f"{gateway.url}/studies", content=body, headers={"content-type": ct}, timeout=120)
    assert resp.status_code == 200, resp.text
    return {str(_ds(p).SOPInstanceUID): p for p in parts}


def _url(gateway: Gateway, data: bytes) -> str:
    ds = _ds(data)
    return (f"{gateway.url}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}")


def test_every_original_comes_back_byte_exact(gateway: Gateway, corpus: dict[str, bytes]) -> None:
    for data in corpus.values():
        resp = httpx.get(_url(gateway, data), headers={"accept": ANY_TS})
        assert resp.status_code == 200
        [(headers, payload)] = split_multipart(resp.content, resp.headers["content-type"])
        assert payload == data
        assert headers["content-type"].startswith("application/dicom")


def test_study_retrieval_streams_every_instance(gateway: Gateway) -> None:
    parts = make_study(2, 3)
    body, ct = multipart_related(parts)
    study = httpx.post(f"{gateway.url}/studies", content=body, headers={"content-type": ct}).json()
    url = study["00081190"]["Value"][0]
    for accept in (ANY_TS, "multipart/related; type=application/dicom; transfer-syntax=*"):
        resp = httpx.get(url, headers={"accept": accept})
        got = [p for _, p in split_multipart(resp.content, resp.headers["content-type"])]
        assert sorted(got) == sorted(parts)


def test_default_syntax_is_explicit_little_endian_decompressed(gateway: Gateway,
                                                               corpus: dict[str, bytes]) -> None:
    checked = 0
    for data in corpus.values():
        ds = _ds(data)
        if ds.file_meta.TransferSyntaxUID != "1.2.840.10008.1.2.4.70" or "PixelData" not in ds:
            continue  # JPEG lossless: decoded values must be exact
        accept = 'multipart/related; type="application/dicom"'
        resp = httpx.get(_url(gateway, data), headers={"accept": accept})
        [(_, payload)] = split_multipart(resp.content, resp.headers["content-type"])
        out = _ds(payload)
        assert out.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
        assert np.array_equal(out.pixel_array, ds.pixel_array)
        checked += 1
    assert checked >= 1


def test_frames_as_stored_are_the_exact_fragments(gateway: Gateway, corpus: dict[str, bytes]) -> None:
    checked = 0
    for data in corpus.values():
        ds = _ds(data)
        if not ds.file_meta.TransferSyntaxUID.is_encapsulated or "PixelData" not in ds:
            continue
        n = int(ds.get("NumberOfFrames", 1) or 1)
        expected = list(generate_frames(ds.PixelData, number_of_frames=n))
        numbers = ",".join(str(i + 1) for i in range(n))
        resp = httpx.get(f"{_url(gateway, data)}/frames/{numbers}", headers={"accept": FRAMES_AS_STORED})
        assert resp.status_code == 200, (ds.file_meta.TransferSyntaxUID, resp.text)
        parts = split_multipart(resp.content, resp.headers["content-type"])
        assert [p.rstrip(b"\0") for _, p in parts] == [e.rstrip(b"\0") for e in expected]
        assert parts[0][0]["content-type"].endswith(f"transfer-syntax={ds.file_meta.TransferSyntaxUID}")
        checked += 1
    assert checked >= 10


def test_uncompressed_frames_equal_pydicom_pixels(gateway: Gateway, corpus: dict[str, bytes]) -> None:
    lossless = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2",
                "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80",
                "1.2.840.10008.1.2.4.90"}
    checked = 0
    for data in corpus.values():
        ds = _ds(data)
        ts = ds.file_meta.TransferSyntaxUID
        if ts not in lossless or "PixelData" not in ds or ds.BitsAllocated == 1:
            continue
        if ds.get("PhotometricInterpretation", "").startswith("YBR") or ds.get("PlanarConfiguration"):
            continue  # pixel_array converts colour spaces and interleaves planes; frames do not
        try:
            expected = ds.pixel_array
        except Exception:
            continue
        n = int(ds.get("NumberOfFrames", 1) or 1)
        resp = httpx.get(f"{_url(gateway, data)}/frames/1",
                         headers={"accept": "multipart/related; type=application/octet-stream"})
        assert resp.status_code == 200, (ts, resp.text)
        [(_, frame)] = split_multipart(resp.content, resp.headers["content-type"])
        first = expected[0] if n > 1 else expected
        assert frame == first.astype(first.dtype.newbyteorder("<")).tobytes(), (ts, ds.SOPInstanceUID)
        checked += 1
    assert checked >= 8


def test_metadata_bulk_data_uris_fetch_the_right_bytes(gateway: Gateway) -> None:
    data = make_instance(rows=32, columns=16, frames=3)
    httpx.post(f"{gateway.url}/studies", content=data, headers={"content-type": "application/dicom"})
    ds = _ds(data)
    resp = httpx.get(f"{_url(gateway, data)}/metadata", headers={"accept-encoding": "gzip"})
    assert resp.headers["content-type"].startswith("application/dicom+json")
    [meta] = resp.json()
    assert meta["00080018"]["Value"] == [ds.SOPInstanceUID]
    uri = meta["7FE00010"]["BulkDataURI"]
    assert uri.startswith(gateway.url + "/studies/")
    single = httpx.get(uri, headers={"accept": "application/octet-stream"})
    assert single.content == ds.PixelData
    multi = httpx.get(uri, headers={"accept": "multipart/related; type=application/octet-stream"})
    [(_, payload)] = split_multipart(multi.content, multi.headers["content-type"])
    assert payload == ds.PixelData
    series = httpx.get(f"{gateway.url}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/metadata")
    assert len(series.json()) == 1
    big = make_study(1, 30)
    body, ct = multipart_related(big)
    study = httpx.post(f"{gateway.url}/studies", content=body, headers={"content-type": ct}).json()
    zipped = httpx.get(study["00081190"]["Value"][0] + "/metadata", headers={"accept-encoding": "gzip"})
    assert zipped.headers.get("content-encoding") == "gzip"
    assert len(zipped.json()) == 30
    assert int(zipped.headers["content-length"]) < len(json.dumps(zipped.json())) / 3


def test_rendered_and_thumbnails_are_real_images(gateway: Gateway) -> None:
    data = make_instance(rows=64, columns=48)
    httpx.post(f"{gateway.url}/studies", content=data, headers={"content-type": "application/dicom"})
    ds = _ds(data)
    url = _url(gateway, data)
    jpeg = httpx.get(f"{url}/rendered")
    assert jpeg.headers["content-type"] == "image/jpeg"
    image = Image.open(io.BytesIO(jpeg.content))
    assert image.size == (48, 64)
    assert np.asarray(image).std() > 5  # not blank
    png = httpx.get(f"{url}/rendered", params={"window": "100,50"}, headers={"accept": "image/png"})
    assert Image.open(io.BytesIO(png.content)).format == "PNG"
    assert png.content != httpx.get(f"{url}/rendered", headers={"accept": "image/png"}).content
    for thumb_url in (f"{url}/thumbnail",
                      f"{gateway.url}/studies/{ds.StudyInstanceUID}/thumbnail",
                      f"{gateway.url}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/thumbnail"):
        thumb = httpx.get(thumb_url, params={"viewport": "32,32"})
        assert thumb.status_code == 200
        assert max(Image.open(io.BytesIO(thumb.content)).size) <= 32
    many = httpx.get(f"{gateway.url}/studies/{ds.StudyInstanceUID}/rendered")
    assert len(split_multipart(many.content, many.headers["content-type"])) == 1


@pytest.mark.parametrize(
    ("suffix", "accept", "status"),
    [
        ("", "application/dicom+xml", 406),
        ("", "multipart/related; type=\"application/dicom\"; transfer-syntax=1.2.840.10008.1.2.4.50", 406),
        ("/frames/1", "multipart/related; type=image/jpeg", 406),
        ("/frames/1", "text/html", 406),
        ("/frames/0", None, 400),
        ("/frames/1,a", None, 400),
        ("/frames/2", None, 404),
        ("/rendered", "application/pdf", 406),
        ("/bulkdata/0010ZZZZ", None, 400),
        ("/bulkdata/00100010", None, 404),
    ],
)
def test_errors_follow_ps3_18(gateway: Gateway, suffix: str, accept: str | None, status: int) -> None:
    data = make_instance()
    httpx.post(f"{gateway.url}/studies", content=data, headers={"content-type": "application/dicom"})
    resp = httpx.get(_url(gateway, data) + suffix, headers={"accept": accept} if accept else {})
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/problem+json"


def test_unknown_and_malformed_uids(gateway: Gateway) -> None:
    assert httpx.get(f"{gateway.url}/studies/1.2.3.999999/metadata").status_code == 404
    assert httpx.get(f"{gateway.url}/studies/not-a-uid/metadata").status_code == 400
