"""WADO-RS against a real gateway: byte-exact originals, frames, metadata, bulk data, rendered images."""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator

import httpx
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import generate_frames
from pydicom.pixels import pixel_array

from tests.dicomdata import (
    make_dataset,
    make_instance,
    make_study,
    multipart_related,
    round_trip_corpus,
    split_multipart,
    to_bytes,
)
from tests.fixtures.gateway import Gateway

ANY_TS = 'multipart/related; type="application/dicom"; transfer-syntax=*'
EXPLICIT_LE = "1.2.840.10008.1.2.1"
FRAMES_AS_STORED = "multipart/related; type=application/octet-stream; transfer-syntax=*"
FRAMES_UNCOMPRESSED = 'multipart/related; type="application/octet-stream"'
LOSSY = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.91"}


def _ds(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def _decodable(ds: pydicom.Dataset) -> bool:
    """Whether pydicom itself (with the installed codecs) decodes the instance's pixel data."""
    try:
        ds.pixel_array  # noqa: B018
    except Exception:
        return False
    return True


@pytest.fixture(scope="module")
def corpus(gateway: Gateway) -> dict[str, bytes]:
    """Every file of the round-trip corpus stored once; SOP Instance UID -> original bytes."""
    parts = round_trip_corpus()
    body, ct = multipart_related(parts)
    resp = httpx.post(f"{gateway.url}/studies", content=body, headers={"content-type": ct}, timeout=120)
    assert resp.status_code == 200, resp.text
    return {str(_ds(p).SOPInstanceUID): p for p in parts}


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=60) as c:
        yield c


def _images(corpus: dict[str, bytes]) -> Iterator[tuple[bytes, pydicom.Dataset]]:
    for data in corpus.values():
        ds = _ds(data)
        if "PixelData" in ds:
            yield data, ds


def _url(gateway: Gateway, data: bytes) -> str:
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return (f"{gateway.url}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}")


def _parts(resp: httpx.Response) -> list[tuple[dict[str, str], bytes]]:
    assert resp.status_code == 200, resp.text
    return split_multipart(resp.content, resp.headers["content-type"])


# ---- instances --------------------------------------------------------------------------------
def test_every_original_comes_back_byte_exact(gateway: Gateway, corpus: dict[str, bytes],
                                              client: httpx.Client) -> None:
    for sop_uid, data in corpus.items():
        ds = _ds(data)
        ts = ds.file_meta.TransferSyntaxUID
        # found by QIDO-RS at instance level, in its study and series ...
        found = client.get(f"{gateway.url}/instances", params={"SOPInstanceUID": sop_uid}).json()
        assert [(f["0020000D"]["Value"][0], f["0020000E"]["Value"][0]) for f in found] == [
            (ds.StudyInstanceUID, ds.SeriesInstanceUID)]
        # ... and returned byte-exact by WADO-RS
        for accept in (ANY_TS, f"multipart/related; type=application/dicom; transfer-syntax={ts}"):
            [(headers, payload)] = _parts(client.get(_url(gateway, data), headers={"accept": accept}))
            assert payload == data
            assert headers["content-type"] == f"application/dicom; transfer-syntax={ts}"


def test_study_retrieval_streams_every_instance(gateway: Gateway, client: httpx.Client) -> None:
    parts = make_study(2, 3)
    body, ct = multipart_related(parts)
    study = client.post(f"{gateway.url}/studies", content=body, headers={"content-type": ct}).json()
    url = study["00081190"]["Value"][0]
    for accept in (ANY_TS, "multipart/related; type=application/dicom; transfer-syntax=*", None,
                   "*/*", "multipart/related;type=application/dicom"):
        resp = client.get(url, headers={"accept": accept} if accept else {})
        got = [p for _, p in _parts(resp)]
        assert sorted(got) == sorted(parts)  # stored in Explicit VR Little Endian: the default


def test_default_syntax_decodes_lossless_and_keeps_lossy_originals(
        gateway: Gateway, corpus: dict[str, bytes], client: httpx.Client) -> None:
    """No transfer-syntax: Explicit VR Little Endian (PS3.18 8.7.3.5.2), lossy pixel data as stored."""
    checked = 0
    for data, ds in _images(corpus):
        ts = ds.file_meta.TransferSyntaxUID
        if not _decodable(ds):
            continue
        [(headers, payload)] = _parts(client.get(
            _url(gateway, data), headers={"accept": 'multipart/related; type="application/dicom"'}))
        if ts in LOSSY or ts == EXPLICIT_LE:
            assert payload == data
            continue
        out = _ds(payload)
        assert headers["content-type"] == f"application/dicom; transfer-syntax={EXPLICIT_LE}"
        assert out.file_meta.TransferSyntaxUID == EXPLICIT_LE
        assert out.SOPInstanceUID == ds.SOPInstanceUID
        assert np.array_equal(out.pixel_array, ds.pixel_array), ts
        checked += 1
    assert checked >= 20


def test_explicit_little_endian_asked_for_is_decoded_even_from_lossy(
        gateway: Gateway, corpus: dict[str, bytes], client: httpx.Client) -> None:
    accept = f"multipart/related; type=application/dicom; transfer-syntax={EXPLICIT_LE}"
    checked = 0
    for data, ds in _images(corpus):
        if ds.file_meta.TransferSyntaxUID not in LOSSY or not _decodable(ds):
            continue
        [(_, payload)] = _parts(client.get(_url(gateway, data), headers={"accept": accept}))
        out = _ds(payload)
        assert out.file_meta.TransferSyntaxUID == EXPLICIT_LE
        assert out.pixel_array.shape == ds.pixel_array.shape
        checked += 1
    assert checked >= 5


def test_single_instance_that_cannot_be_decoded_is_406_not_a_broken_stream(
        gateway: Gateway, corpus: dict[str, bytes], client: httpx.Client) -> None:
    undecodable = [data for data, ds in _images(corpus) if not _decodable(ds)]
    assert undecodable
    accept = f"multipart/related; type=application/dicom; transfer-syntax={EXPLICIT_LE}"
    for data in undecodable:
        resp = client.get(_url(gateway, data), headers={"accept": accept})
        assert resp.status_code == 406
        assert resp.headers["content-type"] == "application/problem+json"


def _broken_rle_study() -> list[bytes]:
    """A study of two RLE instances, the second with a corrupt RLE header no decoder accepts."""
    out = []
    study = make_dataset().StudyInstanceUID
    for broken in (False, True):
        ds = make_dataset(rows=16, columns=16, study_uid=study)
        ds.compress("1.2.840.10008.1.2.5")
        if broken:
            value = bytearray(ds.PixelData)
            offset_table = int.from_bytes(value[4:8], "little")
            value[16 + offset_table + 5] = 0xFF  # the RLE header's first segment offset: far past the end
            ds.PixelData = bytes(value)
        out.append(to_bytes(ds))
    return out


def test_undecodable_instance_comes_as_stored_unless_a_syntax_is_named(
        gateway: Gateway, client: httpx.Client) -> None:
    good, broken = _broken_rle_study()
    body, ct = multipart_related([good, broken])
    stored = client.post(f"{gateway.url}/studies", content=body, headers={"content-type": ct})
    assert stored.status_code == 200
    url = _url(gateway, broken)
    [(headers, payload)] = _parts(client.get(url))  # default syntax: served as stored
    assert payload == broken
    assert headers["content-type"] == "application/dicom; transfer-syntax=1.2.840.10008.1.2.5"
    named = client.get(url, headers={"accept": f"multipart/related; type=application/dicom; "
                                               f"transfer-syntax={EXPLICIT_LE}"})
    assert named.status_code == 406
    study = client.get(f"{gateway.url}/studies/{_ds(good).StudyInstanceUID}")
    syntaxes = sorted(h["content-type"] for h, _ in _parts(study))
    assert syntaxes == [f"application/dicom; transfer-syntax={t}"
                        for t in (EXPLICIT_LE, "1.2.840.10008.1.2.5")]
    frames = client.get(f"{url}/frames/1", headers={"accept": FRAMES_UNCOMPRESSED})
    assert frames.status_code == 406
    assert client.get(f"{url}/frames/1", headers={"accept": FRAMES_AS_STORED}).status_code == 200
    assert client.get(f"{url}/rendered").status_code == 406


def test_study_of_mixed_syntaxes_labels_each_part(gateway: Gateway, corpus: dict[str, bytes],
                                                  client: httpx.Client) -> None:
    """A study retrieved in the default syntax: every part parses and says its own transfer syntax."""
    data = next(d for d, ds in _images(corpus) if ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.5")
    study = _ds(data).StudyInstanceUID
    resp = client.get(f"{gateway.url}/studies/{study}")
    parts = _parts(resp)
    assert len(parts) >= 1
    for headers, payload in parts:
        ds = _ds(payload)
        ts = ds.file_meta.TransferSyntaxUID
        assert headers["content-type"] == f"application/dicom; transfer-syntax={ts}"
        assert headers["content-location"].endswith(f"/instances/{ds.SOPInstanceUID}")


# ---- frames -----------------------------------------------------------------------------------
def test_frames_as_stored_are_the_exact_fragments(gateway: Gateway, corpus: dict[str, bytes],
                                                  client: httpx.Client) -> None:
    checked = 0
    for data, ds in _images(corpus):
        ts = ds.file_meta.TransferSyntaxUID
        if not ts.is_encapsulated:
            continue
        n = int(ds.get("NumberOfFrames", 1) or 1)
        expected = list(generate_frames(ds.PixelData, number_of_frames=n))
        numbers = ",".join(str(i + 1) for i in range(n))
        for accept in (FRAMES_AS_STORED,
                       'multipart/related; type="application/octet-stream"; transfer-syntax="*"',
                       f"multipart/related; type=application/octet-stream; transfer-syntax={ts}"):
            parts = _parts(client.get(f"{_url(gateway, data)}/frames/{numbers}",
                                      headers={"accept": accept}))
            assert [p.rstrip(b"\0") for _, p in parts] == [e.rstrip(b"\0") for e in expected]
            assert parts[0][0]["content-type"] == f"application/octet-stream; transfer-syntax={ts}"
            assert parts[-1][0]["content-location"].endswith(f"/frames/{n}")
        checked += 1
    assert checked >= 20


def test_compressed_frames_in_their_own_media_type(gateway: Gateway, corpus: dict[str, bytes],
                                                   client: httpx.Client) -> None:
    media = {"1.2.840.10008.1.2.4.50": "image/jpeg", "1.2.840.10008.1.2.4.70": "image/jpeg",
             "1.2.840.10008.1.2.4.80": "image/jls", "1.2.840.10008.1.2.4.90": "image/jp2",
             "1.2.840.10008.1.2.5": "image/dicom-rle"}
    seen = set()
    for data, ds in _images(corpus):
        ts = ds.file_meta.TransferSyntaxUID
        if ts not in media:
            continue
        [expected, *_] = generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1) or 1))
        [(headers, payload)] = _parts(client.get(
            f"{_url(gateway, data)}/frames/1", headers={"accept": f"multipart/related; type={media[ts]}"}))
        assert payload.rstrip(b"\0") == expected.rstrip(b"\0")
        assert headers["content-type"] == f"{media[ts]}; transfer-syntax={ts}"
        seen.add(ts)
    assert seen == set(media)


def _expected_frame(ds: pydicom.Dataset, index: int) -> bytes:
    """What the uncompressed frame must be: little-endian samples as pydicom decodes them."""
    n = int(ds.get("NumberOfFrames", 1) or 1)
    ts = ds.file_meta.TransferSyntaxUID
    if not ts.is_encapsulated and ds.BitsAllocated > 1 and ts.is_little_endian:
        size = ds.Rows * ds.Columns * ds.SamplesPerPixel * ds.BitsAllocated // 8
        if ds.PhotometricInterpretation == "YBR_FULL_422":
            size = size * 2 // 3
        return bytes(ds.PixelData[index * size : (index + 1) * size])  # stored bytes, as they are
    arr = pixel_array(ds, index=index if n > 1 else None, raw=ts not in LOSSY)
    if ds.BitsAllocated == 1:
        return np.packbits(arr.astype(np.uint8).ravel(), bitorder="little").tobytes()
    if ds.get("PlanarConfiguration") == 1 and not ts.is_encapsulated:
        arr = arr.transpose(2, 0, 1)
    return arr.astype(arr.dtype.newbyteorder("<")).tobytes()


def test_uncompressed_frames_equal_pydicom_pixels(gateway: Gateway, corpus: dict[str, bytes],
                                                  client: httpx.Client) -> None:
    """Every frame of every decodable image, uncompressed, equals pydicom's decoded samples."""
    checked = set()
    for data, ds in _images(corpus):
        ts = ds.file_meta.TransferSyntaxUID
        if not _decodable(ds) or ts in LOSSY:
            continue
        n = int(ds.get("NumberOfFrames", 1) or 1)
        numbers = ",".join(str(i + 1) for i in range(min(n, 3)))
        for accept in (FRAMES_UNCOMPRESSED, None,
                       f"multipart/related; type=application/octet-stream; transfer-syntax={EXPLICIT_LE}"):
            parts = _parts(client.get(f"{_url(gateway, data)}/frames/{numbers}",
                                      headers={"accept": accept} if accept else {}))
            assert len(parts) == min(n, 3)
            for i, (headers, frame) in enumerate(parts):
                assert headers["content-type"] == f"application/octet-stream; transfer-syntax={EXPLICIT_LE}"
                assert frame == _expected_frame(ds, i), (ts, ds.SOPInstanceUID, i)
        checked.add(str(ts))
    # native (both endians, implicit, deflated), RLE, JPEG lossless, JPEG-LS, JPEG 2000
    assert len(checked) >= 8, checked


def test_single_part_frame_and_lossy_frames_decoded(gateway: Gateway, corpus: dict[str, bytes],
                                                    client: httpx.Client) -> None:
    for data, ds in _images(corpus):
        ts = ds.file_meta.TransferSyntaxUID
        if ts not in LOSSY or not _decodable(ds):
            continue
        resp = client.get(f"{_url(gateway, data)}/frames/1", headers={"accept": "application/octet-stream"})
        assert resp.status_code == 200
        assert resp.headers["content-type"] == f"application/octet-stream; transfer-syntax={EXPLICIT_LE}"
        n = int(ds.get("NumberOfFrames", 1) or 1)
        expected = pixel_array(ds, index=0 if n > 1 else None)  # lossy YCbCr comes out as RGB
        assert resp.content == expected.astype(expected.dtype.newbyteorder("<")).tobytes()


def test_undecodable_frames_are_406_but_still_served_as_stored(
        gateway: Gateway, corpus: dict[str, bytes], client: httpx.Client) -> None:
    for data, ds in _images(corpus):
        if _decodable(ds):
            continue
        url = f"{_url(gateway, data)}/frames/1"
        assert client.get(url, headers={"accept": FRAMES_UNCOMPRESSED}).status_code == 406
        assert client.get(url, headers={"accept": FRAMES_AS_STORED}).status_code == 200


# ---- metadata and bulk data -------------------------------------------------------------------
def test_every_bulk_data_uri_fetches_the_value(gateway: Gateway, corpus: dict[str, bytes],
                                               client: httpx.Client) -> None:
    checked = 0
    for data in corpus.values():
        ds = _ds(data)
        [meta] = client.get(f"{_url(gateway, data)}/metadata").json()
        assert meta["00080018"]["Value"] == [ds.SOPInstanceUID]
        for tag, element in meta.items():
            uri = element.get("BulkDataURI")
            if uri is None:
                continue
            assert uri.startswith(gateway.url + "/studies/")
            single = client.get(uri, headers={"accept": "application/octet-stream"})
            assert single.status_code == 200
            assert single.content == bytes(ds[int(tag, 16)].value), (tag, ds.SOPInstanceUID)
            assert single.headers["content-length"] == str(len(single.content))
            checked += 1
    assert checked >= 50


def test_bulk_data_single_and_multipart(gateway: Gateway, client: httpx.Client) -> None:
    data = make_instance(rows=32, columns=16, frames=3)
    client.post(f"{gateway.url}/studies", content=data, headers={"content-type": "application/dicom"})
    ds = _ds(data)
    [meta] = client.get(f"{_url(gateway, data)}/metadata").json()
    uri = meta["7FE00010"]["BulkDataURI"]
    for accept in ("multipart/related; type=application/octet-stream",
                   'multipart/related; type="application/octet-stream"'):
        [(_, payload)] = _parts(client.get(uri, headers={"accept": accept}))
        assert payload == ds.PixelData
    assert client.get(uri).content == ds.PixelData  # no Accept: single part


def test_metadata_is_gzipped_when_accepted_and_names_the_gateway(gateway: Gateway,
                                                                 client: httpx.Client) -> None:
    big = make_study(1, 30)
    body, ct = multipart_related(big)
    study = client.post(f"{gateway.url}/studies", content=body, headers={"content-type": ct}).json()
    url = study["00081190"]["Value"][0] + "/metadata"
    with client.stream("GET", url, headers={"accept-encoding": "gzip"}) as resp:
        raw = b"".join(resp.iter_raw())
    assert resp.headers["content-encoding"] == "gzip"
    assert resp.headers["content-type"].startswith("application/dicom+json")
    text = gzip.decompress(raw)
    instances = json.loads(text)
    assert len(instances) == 30
    assert len(raw) < len(text) / 3
    assert b"@@BASE@@" not in text
    plain = client.get(url, headers={"accept-encoding": "identity", "accept": "application/json"})
    assert "content-encoding" not in plain.headers
    assert plain.headers["content-type"].startswith("application/json")
    assert plain.json() == instances
    for level in ("", f"/series/{instances[0]['0020000E']['Value'][0]}"):
        assert len(client.get(study["00081190"]["Value"][0] + level + "/metadata").json()) == 30


# ---- rendered ---------------------------------------------------------------------------------
def test_every_decodable_image_renders(gateway: Gateway, corpus: dict[str, bytes],
                                       client: httpx.Client) -> None:
    rendered = 0
    for data, ds in _images(corpus):
        resp = client.get(f"{_url(gateway, data)}/rendered")
        if not _decodable(ds):
            assert resp.status_code == 406
            continue
        assert resp.status_code == 200, (ds.file_meta.TransferSyntaxUID, resp.text)
        image = Image.open(io.BytesIO(resp.content))
        assert image.format == "JPEG"
        assert image.size == (ds.Columns, ds.Rows)
        rendered += 1
    assert rendered >= 40


def test_rendered_windowing_viewport_and_formats(gateway: Gateway, client: httpx.Client) -> None:
    data = make_instance(rows=64, columns=48, frames=2)
    client.post(f"{gateway.url}/studies", content=data, headers={"content-type": "application/dicom"})
    url = _url(gateway, data)
    jpeg = client.get(f"{url}/rendered")
    assert jpeg.headers["content-type"] == "image/jpeg"
    image = Image.open(io.BytesIO(jpeg.content))
    assert image.size == (48, 64)
    assert np.asarray(image).std() > 5  # not blank
    png = client.get(f"{url}/rendered", params={"window": "100,50"}, headers={"accept": "image/png"})
    assert Image.open(io.BytesIO(png.content)).format == "PNG"
    assert png.content != client.get(f"{url}/rendered", headers={"accept": "image/png"}).content
    narrow = np.asarray(Image.open(io.BytesIO(png.content)))
    assert set(np.unique(narrow)) - {0, 255}  # a window inside the range: some mid greys
    assert (narrow == 255).mean() > 0.5  # ... but most values lie above it
    scaled = client.get(f"{url}/frames/2/rendered", params={"viewport": "24,24"},
                        headers={"accept": "image/png"})
    assert Image.open(io.BytesIO(scaled.content)).size == (18, 24)
    large = client.get(f"{url}/rendered", params={"viewport": "96,256"})
    assert Image.open(io.BytesIO(large.content)).size == (96, 128)  # rendered: scaled to fit
    small = client.get(f"{url}/rendered", params={"quality": "5"})
    assert len(small.content) < len(jpeg.content)


def test_thumbnails_and_multipart_rendered(gateway: Gateway, client: httpx.Client) -> None:
    parts = make_study(2, 3)
    body, ct = multipart_related(parts)
    client.post(f"{gateway.url}/studies", content=body, headers={"content-type": ct})
    ds = _ds(parts[0])
    study = f"{gateway.url}/studies/{ds.StudyInstanceUID}"
    series = f"{study}/series/{ds.SeriesInstanceUID}"
    for thumb_url in (f"{_url(gateway, parts[0])}/thumbnail", f"{study}/thumbnail",
                      f"{series}/thumbnail", f"{_url(gateway, parts[0])}/frames/1/thumbnail"):
        thumb = client.get(thumb_url)
        assert thumb.status_code == 200, thumb.text
        assert Image.open(io.BytesIO(thumb.content)).size == (64, 64)  # fits in 128: never enlarged
        small = client.get(thumb_url, params={"viewport": "32,32"}, headers={"accept": "image/png"})
        assert Image.open(io.BytesIO(small.content)).size == (32, 32)
    assert len(_parts(client.get(f"{study}/rendered"))) == 6
    rendered = _parts(client.get(f"{series}/rendered", headers={"accept": "image/png"}))
    assert len(rendered) == 3
    assert all(h["content-type"] == "image/png" for h, _ in rendered)


# ---- errors -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("suffix", "accept", "status"),
    [
        ("", "application/dicom+xml", 406),
        ("", "multipart/related; type=\"application/dicom\"; transfer-syntax=1.2.840.10008.1.2.4.50", 406),
        ("/frames/1", "multipart/related; type=image/jpeg", 406),
        ("/frames/1", "text/html", 406),
        ("/frames/1,2", "application/octet-stream", 406),  # several frames need multipart
        ("/frames/0", None, 400),
        ("/frames/1,a", None, 400),
        ("/frames/2", None, 404),
        ("/frames/1,2", None, 404),
        ("/frames/99999999999", None, 400),
        ("/frames/2/rendered", None, 404),
        ("/rendered", "application/pdf", 406),
        ("/rendered?window=1", None, 400),
        ("/rendered?window=40,400,cubic", None, 400),
        ("/rendered?viewport=0,10", None, 400),
        ("/rendered?quality=101", None, 400),
        ("/metadata", "application/dicom+xml", 406),
        ("/bulkdata/0010ZZZZ", None, 400),
        ("/bulkdata/00100010", None, 404),
        ("/bulkdata/7FE00010", "image/png", 406),
    ],
)
def test_errors_follow_ps3_18(gateway: Gateway, client: httpx.Client, suffix: str,
                              accept: str | None, status: int) -> None:
    data = make_instance()
    client.post(f"{gateway.url}/studies", content=data, headers={"content-type": "application/dicom"})
    resp = client.get(_url(gateway, data) + suffix, headers={"accept": accept} if accept else {})
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/problem+json"


def test_instances_without_pixels_have_no_frames_or_renders(gateway: Gateway, corpus: dict[str, bytes],
                                                            client: httpx.Client) -> None:
    for data in corpus.values():
        if "PixelData" in _ds(data):
            continue
        for suffix in ("/frames/1", "/rendered", "/thumbnail"):
            assert client.get(_url(gateway, data) + suffix).status_code == 404


def test_unknown_and_malformed_uids(gateway: Gateway, client: httpx.Client) -> None:
    unknown = "1.2.3.999999"
    for path in (f"/studies/{unknown}", f"/studies/{unknown}/metadata", f"/studies/{unknown}/rendered",
                 f"/studies/{unknown}/series/1.2/instances/1.3/frames/1",
                 f"/studies/{unknown}/thumbnail"):
        resp = client.get(gateway.url + path)
        assert resp.status_code == 404, path
        assert resp.headers["content-type"] == "application/problem+json"
    for path in ("/studies/not-a-uid/metadata", "/studies/1.2/series/1..2", "/studies/1.02/rendered",
                 "/studies/1.2/series/1.3/instances/x/frames/1"):
        assert client.get(gateway.url + path).status_code == 400, path


def test_whole_study_as_stored_has_an_exact_content_length(gateway: Gateway) -> None:
    """Originals sent as stored get a Content-Length (no chunked framing); one stored without its
    preamble is sent with one, and the length still matches the body byte for byte."""
    study = make_study(1, 3)
    without_preamble = study[0][132:]  # meta group on, as some PACS send: kept as received
    body, ct = multipart_related([without_preamble, *study[1:]])
    assert httpx.post(f"{gateway.url}/studies", content=body, headers={"content-type": ct}).status_code == 200
    uid = str(_ds(study[1]).StudyInstanceUID)
    r = httpx.get(f"{gateway.url}/studies/{uid}", headers={"accept": ANY_TS})
    assert r.status_code == 200
    assert "chunked" not in r.headers.get("transfer-encoding", "")
    assert int(r.headers["content-length"]) == len(r.content)
    parts = [data for _, data in split_multipart(r.content, r.headers["content-type"])]
    assert sorted(parts) == sorted([b"\0" * 128 + b"DICM" + without_preamble, *study[1:]])
