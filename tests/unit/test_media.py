"""Accept-header parsing and WADO-RS negotiation (PS3.18 8.7): quoted and unquoted forms, q-values."""

from __future__ import annotations

import pytest

from dicomgw.errors import NotAcceptable
from dicomgw.web.media import parse_accept
from dicomgw_retrieve import negotiate

JLS = "1.2.840.10008.1.2.4.80"


def test_quoted_and_unquoted_parameters_parse_alike() -> None:
    for header in ('multipart/related; type="application/octet-stream"; transfer-syntax=*',
                   "multipart/related;type=application/octet-stream;transfer-syntax=*"):
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
    choice = negotiate.frames(parse_accept(None), JLS, count=1)
    assert choice.transfer_syntax == "1.2.840.10008.1.2.1"


@pytest.mark.parametrize(
    ("accept", "media", "syntax"),
    [
        ("multipart/related; type=application/octet-stream; transfer-syntax=*",
         "application/octet-stream", "*"),
        (f'multipart/related; type="application/octet-stream"; transfer-syntax={JLS}',
         "application/octet-stream", "*"),
        ("multipart/related; type=image/jls", "image/jls", "*"),
        ("multipart/related; type=application/octet-stream", "application/octet-stream",
         "1.2.840.10008.1.2.1"),
        ("multipart/related; type=image/jpeg, multipart/related; type=application/octet-stream",
         "application/octet-stream", "1.2.840.10008.1.2.1"),
    ],
)
def test_frame_negotiation(accept: str, media: str, syntax: str) -> None:
    choice = negotiate.frames(parse_accept(accept), JLS, count=2)
    assert (choice.media_type, choice.transfer_syntax) == (media, syntax)


def test_nothing_acceptable_is_406() -> None:
    with pytest.raises(NotAcceptable):
        negotiate.frames(parse_accept("multipart/related; type=image/jpeg"), JLS, count=1)
    with pytest.raises(NotAcceptable):
        negotiate.instances(parse_accept("application/dicom+xml"), single_allowed=True)
