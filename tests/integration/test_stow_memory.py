"""A 1 GB STOW streams through the gateway: its peak memory stays under 300 MB (DESIGN invariant 5)."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pydicom
import pytest

from tests.dicomdata import make_dataset, to_bytes, uid
from tests.fixtures.gateway import Gateway

PART_FRAMES = 128  # 512 x 512 x 16-bit = 512 KiB a frame, 64 MiB an instance
PARTS = 16  # 16 x 64 MiB = 1 GiB
BOUNDARY = "dicomgw-1gb-boundary"
LIMIT_BYTES = 300 * 1024 * 1024


def _header_and_pixels(study_uid: str) -> tuple[bytes, int]:
    """A PS3.10 file without its pixel values: the header up to the Pixel Data value, and its length."""
    ds = make_dataset(study_uid=study_uid, rows=512, columns=512, frames=1)
    ds.NumberOfFrames = PART_FRAMES
    pixel_len = 512 * 512 * 2 * PART_FRAMES
    ds.PixelData = b"\0" * 16  # placeholder; its length field is patched below
    data = to_bytes(ds)
    head = data[: -16]
    # explicit VR little endian OW: tag(4) VR(2) reserved(2) length(4) -> patch the 4-byte length
    assert head[-12:-8] == b"\xe0\x7f\x10\x00"
    head = head[:-4] + pixel_len.to_bytes(4, "little")
    return head, pixel_len


def _body(study_uid: str) -> Iterator[bytes]:
    # the study UID is written by pydicom (a byte patch would break the element's length whenever the
    # new UID is shorter: generated UIDs vary in length); the SOP Instance UIDs are patched in at the
    # same length
    head, pixel_len = _header_and_pixels(study_uid)
    ds = pydicom.dcmread(io.BytesIO(head), stop_before_pixels=True)
    old_sop = str(ds.SOPInstanceUID).encode()
    chunk = bytes(range(256)) * 4096  # 1 MiB of a repeating ramp
    for _ in range(PARTS):
        new_sop = (uid().encode() + b"9" * 64)[: len(old_sop)]
        part_head = head.replace(old_sop, new_sop)
        yield f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part_head
        sent = 0
        while sent < pixel_len:
            n = min(len(chunk), pixel_len - sent)
            yield chunk[:n]
            sent += n
        yield b"\r\n"
    yield f"--{BOUNDARY}--\r\n".encode()


@pytest.mark.slow
def test_1gb_stow_keeps_peak_memory_under_300mb(make_gateway, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    gw: Gateway = make_gateway()
    proc = psutil.Process(gw.process.pid)
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            try:
                peak = max(peak, proc.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    study = uid()
    try:
        resp = httpx.post(
            f"{gw.url}/studies",
            content=_body(study),
            headers={"content-type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'},
            timeout=600,
        )
    finally:
        stop.set()
        sampler.join()
    assert resp.status_code == 200, resp.text[:2000]
    assert len(resp.json()["00081199"]["Value"]) == PARTS
    stored = sum(p.stat().st_size for p in (gw.data_dir / "objects").rglob("*.dcm"))
    assert stored > 1024**3
    assert list((gw.data_dir / "spool").iterdir()) == []
    print(f"peak RSS during 1 GiB STOW: {peak / 2**20:.0f} MiB")
    assert peak < LIMIT_BYTES, f"peak RSS {peak / 2**20:.0f} MiB"
