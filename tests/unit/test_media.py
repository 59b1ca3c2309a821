"""Accept-header parsing and WADO-RS negotiation (PS3.18 8.7): quoted and unquoted forms, q-values."""

from __future__ import annotations

import gzip

import pytest
from starlette.requests import Request

from dicomgw.errors import NotAcceptable
from dicomgw.web.media import accepts_gzip, gzip_stream, parse_accept
from dicomgw_retrieve import negotiate

JLS = "1.2.840.10008.1.2.4.80"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def test_quoted_and_unquoted_parameters_parse_alike() -> None:
    for header in ('multipart/related; type="application/octet-stream"; transfer-syntax=*',
                   "multipart/related;type=application/octet-stream;transfer-syntax=*",
                   'Multipart/Related; Type="Application/Octet-Stream"; transfer-syntax="*"'):
        [r] = parse_accept(header)
        assert r.media == "multipart/related"
        assert r.part_type == "application/octet-stream"
        assert r.transfer_syntax == "*"


def test_q_values_order_ranges_and_zero_means_never() -> None:
    ranges = parse_accept('image/png;q=0.5, image/jpeg, application/pdf;q=0, multipart/related; '
                          'type="image/jpeg,image/png"')
    assert [r.media for r in ranges] == ["image/jpeg", "multipart/related", "image/png"]
    assert ranges[1].part_type == "image/jpeg,image/png"  # a comma inside quotes does not split


def test_no_accept_header_means_anything() -> None:
    assert [r.media for r in parse_accept(None)] == ["*/*"]
    assert [r.media for r in parse_accept("  ")] == ["*/*"]
    choice = negotiate.frames(parse_accept(None), JLS, count=1)
    assert choice.transfer_syntax == EXPLICIT_LE


@pytest.mark.parametrize(
    ("accept", "media", "syntax"),
    [
        ("multipart/related; type=application/octet-stream; transfer-syntax=*",
         "application/octet-stream", "*"),
        (f'multipart/related; type="application/octet-stream"; transfer-syntax={JLS}',
         "application/octet-stream", "*"),
        ("multipart/related; type=image/jls", "image/jls", "*"),
        (f"multipart/related; type=image/jls; transfer-syntax={JLS}", "image/jls", "*"),
        ("multipart/related; type=application/octet-stream", "application/octet-stream", EXPLICIT_LE),
        ("multipart/related; type=image/jpeg, multipart/related; type=application/octet-stream",
         "application/octet-stream", EXPLICIT_LE),
        ("multipart/related; type=application/octet-stream; transfer-syntax=1.2.840.10008.1.2.4.50, "
         "multipart/related; type=application/octet-stream; transfer-syntax=*;q=0.5",
         "application/octet-stream", "*"),
        ("multipart/related; type=application/octet-stream;q=0.2, "
         "multipart/related; type=image/jls;q=0.9", "image/jls", "*"),
    ],
)
def test_frame_negotiation(accept: str, media: str, syntax: str) -> None:
    choice = negotiate.frames(parse_accept(accept), JLS, count=2)
    assert (choice.media_type, choice.transfer_syntax, choice.multipart) == (media, syntax, True)


def test_single_part_frames_only_for_one_frame() -> None:
    choice = negotiate.frames(parse_accept("application/octet-stream"), JLS, count=1)
    assert (choice.multipart, choice.transfer_syntax) == (False, EXPLICIT_LE)
    choice = negotiate.frames(parse_accept("image/jls"), JLS, count=1)
    assert (choice.multipart, choice.media_type) == (False, "image/jls")
    with pytest.raises(NotAcceptable):
        negotiate.frames(parse_accept("application/octet-stream"), JLS, count=2)


def test_nothing_acceptable_is_406() -> None:
    with pytest.raises(NotAcceptable):
        negotiate.frames(parse_accept("multipart/related; type=image/jpeg"), JLS, count=1)
    with pytest.raises(NotAcceptable):
        negotiate.instances(parse_accept("application/dicom+xml"), {JLS}, single_allowed=True)
    with pytest.raises(NotAcceptable):
        negotiate.metadata(parse_accept("multipart/related; type=application/dicom+xml"))
    with pytest.raises(NotAcceptable):
        negotiate.rendered(parse_accept("application/dicom"))
    with pytest.raises(NotAcceptable):
        negotiate.bulkdata(parse_accept("image/png"))


@pytest.mark.parametrize(
    ("accept", "stored", "syntax"),
    [
        (None, {JLS}, negotiate.DEFAULT),
        ('multipart/related; type="application/dicom"', {JLS}, negotiate.DEFAULT),
        ("multipart/related; type=application/dicom; transfer-syntax=*", {JLS}, "*"),
        (f"multipart/related; type=application/dicom; transfer-syntax={JLS}", {JLS}, JLS),
        (f"multipart/related; type=application/dicom; transfer-syntax={EXPLICIT_LE}", {JLS}, EXPLICIT_LE),
        # the first range asks for a syntax one instance lacks: the next range is taken
        (f"multipart/related; type=application/dicom; transfer-syntax={JLS}, "
         "multipart/related; type=application/dicom; transfer-syntax=*; q=0.1", {JLS, EXPLICIT_LE}, "*"),
    ],
)
def test_instance_negotiation(accept: str | None, stored: set[str], syntax: str) -> None:
    choice = negotiate.instances(parse_accept(accept), stored, single_allowed=False)
    assert (choice.media_type, choice.multipart) == ("application/dicom", True)
    assert choice.transfer_syntax == syntax


def test_bare_application_dicom_only_for_one_instance() -> None:
    choice = negotiate.instances(parse_accept("application/dicom"), {JLS}, single_allowed=True)
    assert not choice.multipart
    with pytest.raises(NotAcceptable):
        negotiate.instances(parse_accept("application/dicom"), {JLS}, single_allowed=False)
    with pytest.raises(NotAcceptable):
        negotiate.instances(parse_accept(
            "multipart/related; type=application/dicom; transfer-syntax=1.2.840.10008.1.2.4.50"),
            {JLS}, single_allowed=False)


@pytest.mark.parametrize(
    ("accept", "expected"),
    [("*/*", "application/dicom+json"), ("application/json", "application/json"),
     ("application/*", "application/dicom+json"), ("application/dicom+json", "application/dicom+json")],
)
def test_metadata_negotiation(accept: str, expected: str) -> None:
    assert negotiate.metadata(parse_accept(accept)) == expected


@pytest.mark.parametrize(
    ("accept", "expected"),
    [(None, "image/jpeg"), ("image/*", "image/jpeg"), ("image/png", "image/png"),
     ("image/gif;q=0.4, image/png;q=0.5", "image/png"), ("multipart/related; type=image/png", "image/png")],
)
def test_rendered_negotiation(accept: str | None, expected: str) -> None:
    assert negotiate.rendered(parse_accept(accept)) == expected


def _request(accept_encoding: str) -> Request:
    return Request({"type": "http", "headers": [(b"accept-encoding", accept_encoding.encode())]})


@pytest.mark.parametrize(
    ("header", "expected"),
    [("gzip", True), ("gzip, deflate, br", True), ("br;q=1, gzip;q=0.5", True), ("gzip;q=0", False),
     ("identity", False), ("", False), ("*", True)],
)
def test_accepts_gzip_honours_q_values(header: str, expected: bool) -> None:
    assert accepts_gzip(_request(header)) is expected


async def test_gzip_stream_is_one_valid_member() -> None:
    async def chunks():  # type: ignore[no-untyped-def]
        for i in range(50):
            yield f'{{"n": {i}}},'.encode() * 100

    out = b"".join([c async for c in gzip_stream(chunks())])
    assert gzip.decompress(out) == b"".join(f'{{"n": {i}}},'.encode() * 100 for i in range(50))
