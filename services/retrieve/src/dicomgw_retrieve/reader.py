"""Reading what WADO-RS serves out of the store: originals, frames by byte range, bulk values, renders.

The fast paths never parse: an original streams as stored, a stored frame is one ranged read at the
offsets recorded at ingest. Decoding (pydicom + pylibjpeg) runs in worker threads.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from pydicom.dataset import Dataset

from dicomgw import originals
from dicomgw.dicom.frames import (
    EXPLICIT_VR_BIG_ENDIAN,
    PixelDataUndecodable,
    decode_frame,
    decode_frame_array,
    frames_from_whole,
    read_dataset,
    to_native,
    whole_frame_arrays,
)
from dicomgw.dicom.parse import PART10_PREFIX, as_part10
from dicomgw.dicom.render import RenderOptions, header_from_metadata, needs_whole_dataset, render_frame
from dicomgw.errors import NotFound
from dicomgw.index.repository import InstanceRecord
from dicomgw.storage import ObjectStore
from dicomgw.web.media import EXPLICIT_VR_LITTLE_ENDIAN

ORIGINAL = "*"
# Lossy syntaxes: with no transfer-syntax asked for, these are served as stored (PS3.18 8.7.3.5.2:
# the default syntax does not apply when only lossy pixel data is at hand)
LOSSY = frozenset({
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.81",
    "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.93", "1.2.840.10008.1.2.4.100",
    "1.2.840.10008.1.2.4.101", "1.2.840.10008.1.2.4.102", "1.2.840.10008.1.2.4.103",
    "1.2.840.10008.1.2.4.104", "1.2.840.10008.1.2.4.105", "1.2.840.10008.1.2.4.106",
    "1.2.840.10008.1.2.4.112", "1.2.840.10008.1.2.4.203",
})
NATIVE_LITTLE_ENDIAN = frozenset({"1.2.840.10008.1.2", EXPLICIT_VR_LITTLE_ENDIAN})
T = TypeVar("T")


@dataclass(frozen=True)
class Frame:
    data: bytes
    transfer_syntax: str  # what ``data`` is encoded in


# ---- whole instances --------------------------------------------------------------------------
def serves_original(record: InstanceRecord, transfer_syntax: str) -> bool:
    """Whether the original answers a request for ``transfer_syntax`` ('' = default, '*' = any)."""
    stored = record.transfer_syntax_uid
    if transfer_syntax in (ORIGINAL, stored):
        return True
    return transfer_syntax == "" and (stored == EXPLICIT_VR_LITTLE_ENDIAN or stored in LOSSY)


def served_size(record: InstanceRecord) -> int:
    """Bytes ``original_stream`` sends: the stored object, with a preamble when it had none."""
    return record.size + (0 if record.layout.get("preamble", True) else len(PART10_PREFIX))


async def original_stream(store: ObjectStore, record: InstanceRecord) -> AsyncIterator[bytes]:
    """The original as received (reconstructed from a compact copy), chunk by chunk, as a PS3.10 file."""
    if not record.layout.get("preamble", True):
        yield PART10_PREFIX  # stored as received, without preamble; served as a PS3.10 file
    async for chunk in originals.stream(store, record.copy):
        yield chunk


async def read_part10(store: ObjectStore, record: InstanceRecord) -> bytes:
    """The whole original, as a PS3.10 file that pydicom reads."""
    return as_part10(await originals.read(store, record.copy))


def undamaged(record: InstanceRecord) -> None:
    """An instance archived damaged (identified, not readable throughout) is served only as stored:
    its pixel data is not decoded, re-encoded or cut into frames."""
    damage = record.layout.get("damaged")
    if damage:
        raise PixelDataUndecodable(f"the instance was archived as received but is damaged ({damage}): "
                                   "it can be retrieved as stored only")


async def transcoded(store: ObjectStore, record: InstanceRecord, transfer_syntax: str) -> bytes:
    """The whole instance re-encoded in a native syntax ('' = Explicit VR Little Endian)."""
    undamaged(record)
    original = await read_part10(store, record)
    return await asyncio.to_thread(to_native, original, transfer_syntax or EXPLICIT_VR_LITTLE_ENDIAN)


# ---- frames -----------------------------------------------------------------------------------
def frame_count(record: InstanceRecord) -> int:
    """Number of frames; NotFound when the instance has no pixel data."""
    layout = record.layout
    if "pixel_data" not in layout and not (layout.get("deflated") and layout.get("pixel")):
        raise NotFound("the instance has no pixel data")
    if layout.get("frames") is not None:
        return len(layout["frames"])
    return int(layout.get("pixel", {}).get("NumberOfFrames") or 1)


def ranges_usable(record: InstanceRecord) -> bool:
    """Whether frames can be read by byte range (and decoded alone)."""
    layout = record.layout
    if layout.get("frames") is None:
        return False
    # big-endian OW words hold pairs of 8-bit samples that a frame boundary may split
    return not (record.transfer_syntax_uid == EXPLICIT_VR_BIG_ENDIAN
                and layout["pixel"].get("BitsAllocated") == 8
                and layout.get("pixel_data", {}).get("vr") == "OW")


async def stored_frame(store: ObjectStore, record: InstanceRecord, number: int) -> bytes:
    """One frame's stored bytes (1-based): one ranged read spanning its fragment(s), or of its own
    codestream in a compact copy."""
    ranges = record.layout["frames"][number - 1]
    if record.stored_form != originals.VERBATIM:
        return await _compact_frame(store, record, number, ranges)
    if len(ranges) == 1:
        offset, length = ranges[0]
        return await store.read_range(record.object_key, offset, length)
    start = ranges[0][0]
    end = ranges[-1][0] + ranges[-1][1]
    span = await store.read_range(record.object_key, start, end - start)
    return b"".join(span[o - start : o - start + n] for o, n in ranges)


async def _compact_frame(store: ObjectStore, record: InstanceRecord, number: int,
                         ranges: list[list[int]]) -> bytes:
    """A frame of a compact copy: its codestream decoded, when the container keeps the frames of
    the original's native Pixel Data apart; otherwise cut out of the reconstructed original."""
    found = await originals.header(store, record.copy)
    if found.frames == len(record.layout["frames"]):
        data = await originals.frame_bytes(store, record.copy, number - 1)
        if data is not None:
            return data
    original = await originals.read(store, record.copy)
    return b"".join(original[o:o + n] for o, n in ranges)


async def compact_syntax(store: ObjectStore, record: InstanceRecord) -> str | None:
    """The transfer syntax in which a compact copy's frame codestreams can be sent as they are (its
    frames those of the original's native Pixel Data); None for a verbatim copy or the whole-file
    form."""
    if record.stored_form == originals.VERBATIM or not ranges_usable(record):
        return None
    found = await originals.header(store, record.copy)
    return found.transfer_syntax if found.frames == len(record.layout["frames"]) else None


async def frame(store: ObjectStore, record: InstanceRecord, number: int,
                transfer_syntax: str) -> Frame:
    """Frame ``number`` (1-based) as stored (ORIGINAL) or as uncompressed little-endian bytes.

    Without usable byte ranges (deflated, 1-bit, fragments that do not map to frames) the whole
    object is decoded, and the frame is uncompressed whatever was asked.
    """
    if not 1 <= number <= frame_count(record):
        raise NotFound(f"the instance has {frame_count(record)} frame(s)")
    undamaged(record)
    stored_ts = record.transfer_syntax_uid
    if transfer_syntax not in (ORIGINAL, stored_ts, EXPLICIT_VR_LITTLE_ENDIAN) and \
            record.stored_form != originals.VERBATIM:
        got = await originals.frame_codestream(store, record.copy, number - 1)
        if got is not None and got[0].transfer_syntax == transfer_syntax:
            return Frame(got[1], transfer_syntax)  # the compact copy's codestream, not decoded
    if not ranges_usable(record):
        original = await read_part10(store, record)
        [data] = await asyncio.to_thread(frames_from_whole, original, [number - 1])
        return Frame(data, EXPLICIT_VR_LITTLE_ENDIAN)
    data = await stored_frame(store, record, number)
    if transfer_syntax in (ORIGINAL, stored_ts):
        return Frame(data, stored_ts)
    if stored_ts in NATIVE_LITTLE_ENDIAN:
        return Frame(data, EXPLICIT_VR_LITTLE_ENDIAN)  # the same pixel bytes
    decoded = await asyncio.to_thread(decode_frame, data, stored_ts, record.layout["pixel"])
    return Frame(decoded, EXPLICIT_VR_LITTLE_ENDIAN)


async def in_order(make: Callable[[int], Awaitable[T]], items: list[int],
                   window: int = 4) -> AsyncIterator[tuple[int, T]]:
    """``(item, await make(item))`` for each item in order, up to ``window`` running ahead."""
    pending: list[tuple[int, asyncio.Future[T]]] = []
    try:
        for item in items:
            pending.append((item, asyncio.ensure_future(make(item))))
            if len(pending) >= window:
                done, future = pending.pop(0)
                yield done, await future
        while pending:
            done, future = pending.pop(0)
            yield done, await future
    finally:
        for _, future in pending:  # the client went away: stop the work running ahead
            future.cancel()


# ---- bulk data --------------------------------------------------------------------------------
def bulk_location(record: InstanceRecord, tag: str) -> tuple[int, int] | None:
    """Offset and length of a bulk value in the original, when ingest located it."""
    located = record.layout.get("bulk", {}).get(tag)
    if located is None or record.layout.get("deflated"):
        return None
    offset, length = int(located[0]), int(located[1])
    pixel_data = record.layout.get("pixel_data", {})
    if pixel_data.get("encapsulated") and pixel_data.get("tag") == tag:
        length -= 8  # the value ends before the Sequence Delimitation Item that ingest counted in
    return offset, length


async def bulk_value(store: ObjectStore, record: InstanceRecord, tag: str) -> bytes | None:
    """A bulk value parsed out of the whole original (deflated objects); None when absent."""
    original = await read_part10(store, record)

    def _value() -> bytes | None:
        element = read_dataset(original).get(int(tag, 16))
        value = None if element is None else element.value
        return bytes(value) if isinstance(value, bytes | bytearray) else None

    return await asyncio.to_thread(_value)


# ---- rendering --------------------------------------------------------------------------------
async def _decoded_frame(store: ObjectStore, record: InstanceRecord,
                         index: int) -> tuple[np.ndarray, Dataset]:
    """Frame ``index`` (0-based) decoded for display (colour as RGB) and the attributes to render it."""
    undamaged(record)
    header = header_from_metadata(record.metadata_json)
    if ranges_usable(record) and not needs_whole_dataset(header):
        data = await stored_frame(store, record, index + 1)
        arr = await asyncio.to_thread(decode_frame_array, data, record.transfer_syntax_uid,
                                      record.layout["pixel"], as_rgb=True)
        return arr, header
    original = await read_part10(store, record)

    def _whole() -> tuple[np.ndarray, Dataset]:
        ds = read_dataset(original)
        [arr] = whole_frame_arrays(ds, [index], as_rgb=True)
        return arr, ds

    return await asyncio.to_thread(_whole)


async def rendered(store: ObjectStore, record: InstanceRecord, index: int,
                   options: RenderOptions) -> bytes:
    """Frame ``index`` (0-based) of an instance rendered to ``options.media_type``."""
    if not record.layout.get("pixel", {}).get("Rows"):
        raise NotFound("the instance has no image to render")
    count = frame_count(record)
    if index >= count:
        raise NotFound(f"the instance has {count} frame(s)")
    arr, ds = await _decoded_frame(store, record, index)
    return await asyncio.to_thread(render_frame, arr, ds, index, options)

