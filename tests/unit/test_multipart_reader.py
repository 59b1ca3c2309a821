"""The streaming multipart/related reader: any chunking of the body yields the same parts and digests."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dicomgw.errors import BadRequest, PayloadTooLarge
from dicomgw.multipart import parse_media_type, spool_parts
from tests.dicomdata import multipart_related


async def _collect(
    body: bytes, cuts: list[int], spool: Path, max_bytes: int = 0
) -> list[tuple[bytes, bytes]]:
    async def gen():  # type: ignore[no-untyped-def]
        last = 0
        for cut in [*sorted(set(cuts)), len(body)]:
            if cut > last:
                yield body[last:cut]
                last = cut

    out = []
    async for part in spool_parts(gen(), "dicomgw-test-boundary", spool, max_bytes=max_bytes):
        out.append((part.path.read_bytes(), part.sha256))
        part.discard()
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    parts=st.lists(st.binary(min_size=0, max_size=3000), min_size=1, max_size=5),
    cuts=st.lists(st.integers(min_value=0, max_value=20000), max_size=30),
)
def test_any_chunking_yields_the_same_parts(tmp_path: Path, parts: list[bytes], cuts: list[int]) -> None:
    body, _ = multipart_related(parts)
    got = asyncio.run(_collect(body, [c % (len(body) + 1) for c in cuts], tmp_path))
    assert [data for data, _ in got] == parts
    assert [sha for _, sha in got] == [hashlib.sha256(p).digest() for p in parts]
    assert list(tmp_path.iterdir()) == []


def test_body_without_closing_boundary_is_bad_request_and_leaves_no_files(tmp_path: Path) -> None:
    body, _ = multipart_related([b"a" * 100, b"b" * 100])
    with pytest.raises(BadRequest):
        asyncio.run(_collect(body[: len(body) - 150], [], tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_body_over_the_cap_is_refused(tmp_path: Path) -> None:
    body, _ = multipart_related([b"a" * 5000])
    with pytest.raises(PayloadTooLarge):
        asyncio.run(_collect(body, [100, 200, 3000], tmp_path, max_bytes=1000))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "header",
    [
        'multipart/related; type="application/dicom"; boundary=abc',
        "multipart/related;type=application/dicom;boundary=abc",
        'Multipart/Related; boundary="abc"; type="application/dicom"',
    ],
)
def test_media_type_parameters_parse_quoted_or_not(header: str) -> None:
    media, params = parse_media_type(header)
    assert media == "multipart/related"
    assert params["type"] == "application/dicom"
    assert params["boundary"] == "abc"
