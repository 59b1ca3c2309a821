"""Reading what WADO-RS serves out of the store: originals, frames by byte range, bulk values."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pydicom

from dicomgw.dicom.frames import decode_frame, frames_from_whole, to_explicit_little_endian
from dicomgw.dicom.parse import PART10_PREFIX, as_part10
from dicomgw.errors import NotFound
from dicomgw.index.repository import InstanceRecord
from dicomgw.storage import ObjectStore
from dicomgw.web.media import EXPLICIT_VR_LITTLE_ENDIAN

ORIGINAL = "*"


async def instance_bytes(store: ObjectStore, record: InstanceRecord,
                         transfer_syntax: str) -> AsyncIterator[bytes]:
    """The original streamed as stored, or the whole instance re-encoded (Explicit VR LE)."""
    if transfer_syntax in (ORIGINAL, record.transfer_syntax_uid):
        if not record.layout.get("preamble", True):
            yield PART10_PREFIX  # stored as received; served as a PS3.10 file
        async for chunk in store.open_stream(record.object_key):
            yield chunk
        return
    original = await read_part10(store, record)
    yield await asyncio.to_thread(to_explicit_little_endian, original)


async def read_part10(store: ObjectStore, record: InstanceRecord) -> bytes:
    """The whole original, as a PS3.10 file that pydicom reads."""
    return as_part10(await store.read(record.object_key))


def can_serve(record: InstanceRecord, transfer_syntax: str) -> bool:
    return transfer_syntax in (ORIGINAL, record.transfer_syntax_uid, EXPLICIT_VR_LITTLE_ENDIAN)


async def stored_frame(store: ObjectStore, record: InstanceRecord, ranges: list[list[int]]) -> bytes:
    """One frame's stored bytes: one ranged read spanning its fragment(s)."""
    if len(ranges) == 1:
        offset, length = ranges[0]
        return await store.read_range(record.object_key, offset, length)
    start = ranges[0][0]
    end = ranges[-1][0] + ranges[-1][1]
    span = await store.read_range(record.object_key, start, end - start)
    return b"".join(span[o - start : o - start + n] for o, n in ranges)


async def frames(store: ObjectStore, record: InstanceRecord, numbers: list[int],
                 transfer_syntax: str) -> list[bytes]:
    """Frames (1-based numbers) in the stored syntax (ORIGINAL) or uncompressed little endian."""
    layout = record.layout
    ranges = layout.get("frames")
    if "pixel_data" not in layout and not layout.get("deflated"):
        raise NotFound("the instance has no pixel data")
    swapped_bytes = (record.transfer_syntax_uid == "1.2.840.10008.1.2.2"
                     and layout.get("pixel", {}).get("BitsAllocated") == 8
                     and layout.get("pixel_data", {}).get("vr") == "OW")
    if ranges is None or (swapped_bytes and transfer_syntax != ORIGINAL):
        # big-endian OW holds 8-bit samples in swapped words that frames may split: let pydicom do it
        original = await read_part10(store, record)
        decoded, count = await asyncio.to_thread(frames_from_whole, original, [n - 1 for n in numbers])
        if len(decoded) < len(numbers):
            raise NotFound(f"the instance has {count} frame(s)")
        return decoded
    if any(n > len(ranges) for n in numbers):
        raise NotFound(f"the instance has {len(ranges)} frame(s)")
    stored = await asyncio.gather(*(stored_frame(store, record, ranges[n - 1]) for n in numbers))
    if transfer_syntax == ORIGINAL or transfer_syntax == record.transfer_syntax_uid:
        return list(stored)
    pixel = layout["pixel"]
    return list(await asyncio.gather(*(
        asyncio.to_thread(decode_frame, frame, record.transfer_syntax_uid, pixel)
        for frame in stored
    )))


async def bulk_value(store: ObjectStore, record: InstanceRecord, tag: str) -> AsyncIterator[bytes]:
    """A bulk value: a ranged stream from the original, or parsed out of it when not located."""
    located = record.layout.get("bulk", {}).get(tag)
    if located is not None and not record.layout.get("deflated"):
        offset, length = located
        async for chunk in store.open_stream(record.object_key, start=offset, length=length):
            yield chunk
        return
    original = await read_part10(store, record)

    def _value() -> bytes:
        import io

        ds = pydicom.dcmread(io.BytesIO(original))
        element = ds.get(int(tag, 16))
        if element is None or not isinstance(element.value, bytes | bytearray):
            raise NotFound("no bulk data at that tag")
        return bytes(element.value)

    yield await asyncio.to_thread(_value)
