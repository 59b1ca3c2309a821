"""Fuzzing the two parsers that read what a stranger sends: the multipart reader and the DICOM parser.

Whatever the bytes, each must answer the way the standard asks (the reader: the parts, or a 400/413;
the parser: a parsed instance, or a refusal with a DICOM failure reason) within a bounded time, and
leave no spooled file behind. Nothing else (an IndexError, a RecursionError, a MemoryError...) may
come out: that would be a 500.

`make test` runs a bounded number of examples (DICOMGW_FUZZ_EXAMPLES, default 150 each); `make fuzz`
runs many more. A failing input is written to tests/fuzz/regressions/<parser>/ (when
DICOMGW_FUZZ_SAVE=1, as `make fuzz` sets it); every file there is replayed by every run.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dicomgw.dicom.parse import parse_instance
from dicomgw.errors import BadRequest, InstanceRejected, PayloadTooLarge
from dicomgw.multipart import spool_parts
from tests.dicomdata import make_instance, multipart_related, pydicom_files

EXAMPLES = int(os.environ.get("DICOMGW_FUZZ_EXAMPLES", "150"))
REGRESSIONS = Path(__file__).parent / "regressions"
FUZZ = settings(max_examples=EXAMPLES, deadline=5000, derandomize=False, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _keep(parser: str, data: bytes) -> None:
    """Write a failing input where every later run replays it."""
    if os.environ.get("DICOMGW_FUZZ_SAVE") == "1":
        folder = REGRESSIONS / parser
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{hashlib.sha256(data).hexdigest()[:16]}.bin").write_bytes(data)


# ---- the multipart reader ---------------------------------------------------------------------------
BOUNDARY = "fuzz-boundary"


def read_multipart(body: bytes, chunk: int) -> None:
    """Read ``body`` in chunks of ``chunk`` bytes: parts or a 400/413, and no file left behind."""

    async def run(spool: Path) -> None:
        async def chunks():  # type: ignore[no-untyped-def]
            for i in range(0, len(body), chunk):
                yield body[i:i + chunk]

        try:
            async for part in spool_parts(chunks(), BOUNDARY, spool, max_bytes=1 << 20):
                part.discard()
        except (BadRequest, PayloadTooLarge):
            pass

    with tempfile.TemporaryDirectory() as folder:
        asyncio.run(run(Path(folder)))
        assert list(Path(folder).iterdir()) == [], "a spooled part was left behind"


def _checked(parser: str, data: bytes, check: Callable[[], None]) -> None:
    try:
        check()
    except BaseException:
        _keep(parser, data)
        raise


@st.composite
def multipart_bodies(draw: st.DrawFn) -> bytes:
    """Well-formed bodies cut, spliced and corrupted: deeper than random bytes get."""
    parts = draw(st.lists(st.binary(max_size=400), min_size=0, max_size=4))
    body = bytearray(multipart_related(parts, BOUNDARY)[0])
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(body)))
        kind = draw(st.sampled_from(["cut", "insert", "flip", "boundary", "crlf"]))
        if kind == "cut":
            del body[at:]
        elif kind == "insert":
            body[at:at] = draw(st.binary(max_size=64))
        elif kind == "flip" and at < len(body):
            body[at] ^= draw(st.integers(1, 255))
        elif kind == "boundary":
            marker = BOUNDARY.encode()
            body[at:at] = draw(st.sampled_from([b"--" + marker, b"\r\n--" + marker + b"--",
                                                b"\r\n--" + marker + b"\r\n"]))
        else:
            body[at:at] = b"\r\n" * draw(st.integers(1, 200))
    return bytes(body)


@FUZZ
@given(body=st.one_of(multipart_bodies(), st.binary(max_size=2000)), chunk=st.integers(1, 4096))
def test_fuzz_multipart(body: bytes, chunk: int) -> None:
    _checked("multipart", body, lambda: read_multipart(body, chunk))


# ---- the DICOM parser -------------------------------------------------------------------------------
def parse_bytes(data: bytes) -> None:
    """Parse ``data`` as a received part: an instance or an InstanceRejected, nothing else."""
    with tempfile.NamedTemporaryFile(suffix=".dcm") as f:
        f.write(data)
        f.flush()
        try:
            parsed = parse_instance(Path(f.name))
        except InstanceRejected:
            return
        assert parsed.sop_instance_uid and parsed.study_instance_uid


def _seeds() -> list[bytes]:
    small = [p.read_bytes() for p in pydicom_files() if p.stat().st_size < 200_000]
    return [make_instance(), *small[:40]]


SEEDS = _seeds()


@st.composite
def dicom_files(draw: st.DrawFn) -> bytes:
    """Real files, truncated, flipped, spliced, and with lengths that lie."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["cut", "flip", "insert", "length", "undefined", "nest"]))
        if kind == "cut":
            del data[at:]
        elif kind == "flip" and at < len(data):
            data[at] ^= draw(st.integers(1, 255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(max_size=32))
        elif kind == "length" and at + 4 <= len(data):
            data[at:at + 4] = struct.pack("<I", draw(st.sampled_from([0xFFFFFFFE, 0x7FFFFFFF, 0x10000000,
                                                                      len(data) + 1, 3])))
        elif kind == "undefined" and at + 4 <= len(data):
            data[at:at + 4] = b"\xff\xff\xff\xff"
        elif kind == "nest":
            # a sequence item opened many times over: deeply nested sequences
            data[at:at] = b"\xfe\xff\x00\xe0\xff\xff\xff\xff" * draw(st.integers(1, 3000))
    return bytes(data)


@FUZZ
@given(data=dicom_files())
def test_fuzz_dicom_parser(data: bytes) -> None:
    _checked("dicom", data, lambda: parse_bytes(data))


def test_truncated_at_every_position_of_a_real_header() -> None:
    """Every cut of a real file's first kilobyte (where its meta group and first elements begin and
    end), and every 257th byte after it: parsed or refused, never anything else."""
    for data in SEEDS[:4]:
        for end in [*range(0, min(len(data), 1024)), *range(1024, len(data), 257)]:
            _checked("dicom", data[:end], lambda cut=data[:end]: parse_bytes(cut))


# ---- what earlier runs found ------------------------------------------------------------------------
def _regressions(parser: str) -> list[Path]:
    return sorted((REGRESSIONS / parser).glob("*.bin"))


@pytest.mark.parametrize("path", _regressions("multipart"), ids=lambda p: p.name)
def test_multipart_regressions(path: Path) -> None:
    for chunk in (1, 7, 4096):
        read_multipart(path.read_bytes(), chunk)


@pytest.mark.parametrize("path", _regressions("dicom"), ids=lambda p: p.name)
def test_dicom_regressions(path: Path) -> None:
    parse_bytes(path.read_bytes())
