"""The client's splitter of a multipart answer (a series in one request): any chunking of the body gives
the same parts, a body cut short says so, and the boundary is read from the Content-Type as servers
write it."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dicomgw_client.api import MultipartSplitter, boundary_of
from tests.dicomdata import multipart_related


def _split(body: bytes, boundary: str, cuts: list[int]) -> tuple[list[bytes], bool]:
    splitter = MultipartSplitter(boundary)
    parts: list[bytes] = []
    pieces: list[bytes] = []
    last = 0
    for cut in [*sorted({c % (len(body) + 1) for c in cuts}), len(body)]:
        if cut <= last:
            continue
        for event, data in splitter.feed(body[last:cut]):
            if event == "begin":
                pieces = []
            elif event == "data":
                assert data
                pieces.append(data)
            else:
                parts.append(b"".join(pieces))
        last = cut
    return parts, splitter.complete


# parts that look like the delimiter's beginning, and CR LF everywhere
PARTS = st.lists(st.binary(min_size=0, max_size=2000).map(lambda b: b.replace(b"x", b"\r\n--dicomgw-te")),
                 min_size=1, max_size=5)


@settings(max_examples=80, deadline=None)
@given(parts=PARTS, cuts=st.lists(st.integers(min_value=0, max_value=20000), max_size=30))
def test_any_chunking_gives_the_same_parts(parts: list[bytes], cuts: list[int]) -> None:
    body, content_type = multipart_related(parts)
    boundary = boundary_of(content_type)
    assert boundary is not None
    assert _split(body, boundary, cuts) == (parts, True)


@settings(max_examples=40, deadline=None)
@given(parts=PARTS, cut=st.integers(min_value=3, max_value=20))  # past the last CR LF
def test_a_body_cut_short_is_not_complete(parts: list[bytes], cut: int) -> None:
    body, content_type = multipart_related(parts)
    boundary = boundary_of(content_type)
    assert boundary is not None
    got, complete = _split(body[:-cut], boundary, [])
    assert not complete and len(got) <= len(parts)


def test_the_boundary_is_read_as_servers_write_it() -> None:
    assert boundary_of('multipart/related; type="application/dicom"; boundary="abc def"') == "abc def"
    assert boundary_of("Multipart/Related; Boundary=xyz; type=application/dicom") == "xyz"
    assert boundary_of("application/dicom") is None
    assert boundary_of("multipart/related; type=application/dicom") is None
