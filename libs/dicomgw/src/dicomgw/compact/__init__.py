"""Compact originals (issue 12): a lossless, byte-exact, smaller stored form of one PS3.10 file.

``compact(original)`` keeps every byte that is not pixel data verbatim (zstd) and encodes each frame of
a native Pixel Data value with a lossless image codec over its raw stored bits, choosing per object the
smallest of ``codecs`` (JPEG-LS, HTJ2K or zstd by default). Anything else (encapsulated, deflated,
1- or 32-bit, float, undefined lengths, not DICOM at all) is the whole file in zstd. Nothing is returned
that has not been decoded back into the identical bytes first, and nothing that does not save MIN_SAVING.

Reading: ``reconstruct(data)`` or ``reconstruct_stream(data or read)`` for the original;
``read_header(prefix)``, ``Header.frame_range(i)`` and ``decode_frame(header, i, codestream)`` for one
frame with two ranged reads; ``Compacted.transfer_syntax`` names the syntax in which the frame
codestreams can be served without decoding. The layout is in ``dicomgw.compact.container``.

Memory: ``compact`` holds the original, the codestreams and the container (the original plus twice
its compact size); readers hold one chunk or frame when streaming.
"""

from __future__ import annotations

import hashlib
import logging
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from dicomgw.compact.codecs import (
    FRAME_CODECS,
    encode_frame,
    fits_bits_stored,
    served_transfer_syntax,
    zstd_compress,
)
from dicomgw.compact.container import (
    CHUNK_BYTES,
    HEADER_PROBE_BYTES,
    PREAMBLE_BYTES,
    CompactCorrupt,
    Header,
    RangeReader,
    decode_frame,
    header_length,
    is_compact,
    read_header,
    reconstruct,
    reconstruct_stream,
    write,
)
from dicomgw.compact.locate import PixelLocation, locate_pixel_data

__all__ = [
    "ALL_CODECS",
    "DEFAULT_CODECS",
    "HEADER_PROBE_BYTES",
    "MIN_SAVING",
    "PREAMBLE_BYTES",
    "CompactCorrupt",
    "Compacted",
    "Header",
    "RangeReader",
    "compact",
    "decode_frame",
    "header_length",
    "is_compact",
    "read_header",
    "reconstruct",
    "reconstruct_stream",
]

log = logging.getLogger("dicomgw.compact")

# Measured on 89 MB of real native images (bench/compact_codecs.py): JPEG-LS wins on most grey images,
# HTJ2K on some grey and on colour (reversible colour transform), zstd on palette and synthetic images.
# Trying all three costs about what JPEG-LS + zstd does (HTJ2K encodes and decodes twice as fast) and
# stores 15 % less (ratio 4.45 against 3.80; zlib of the whole file, Orthanc's, 2.46). JPEG XL
# (ALL_CODECS) stores 8 % less again at half the speed, and few viewers decode its frames.
DEFAULT_CODECS: tuple[str, ...] = ("jpegls", "htj2k", "zstd")
ALL_CODECS: tuple[str, ...] = FRAME_CODECS
MIN_SAVING = 0.05


@dataclass(frozen=True)
class Compacted:
    """A compact form and the facts about it a caller indexes."""

    data: bytes
    codec: str  # jpegls | htj2k | jpegxl | zstd-frames (each frame zstd) | zstd (the whole file)
    original_size: int
    original_sha256: bytes
    frames: int  # 0 for the whole-file form
    transfer_syntax: str | None  # frame codestreams are valid in it as they are (None: decode first)

    @property
    def compact_size(self) -> int:
        return len(self.data)


def _chunks(data: memoryview, offset: int) -> tuple[list[bytes], list[tuple[int, int, int]]]:
    stored, segments = [], []
    for start in range(0, len(data), CHUNK_BYTES):
        part = zstd_compress(data[start:start + CHUNK_BYTES])
        segments.append((offset, len(part), min(CHUNK_BYTES, len(data) - start)))
        stored.append(part)
        offset += len(part)
    return stored, segments


def _assemble(original: bytes, sha256: bytes, codec: str, location: PixelLocation | None,
              codestreams: list[bytes], transfer_syntax: str | None) -> Compacted:
    view = memoryview(original)
    start, length = (location.offset, location.length) if location else (len(original), 0)
    head, head_segments = _chunks(view[:start], 0)
    position = sum(len(p) for p in head)
    table = []
    for codestream in codestreams:
        table.append((position, len(codestream), zlib.crc32(codestream)))
        position += len(codestream)
    tail, tail_segments = _chunks(view[start + length:], position)
    body_length = position + sum(len(p) for p in tail)
    meta: dict[str, Any] = {
        "codec": codec, "original_size": len(original), "sha256": sha256.hex(),
        "pixel_offset": start, "pixel_length": length,
        "geometry": asdict(location.geometry) if location else None, "transfer_syntax": transfer_syntax,
        "head": head_segments, "tail": tail_segments, "body_length": body_length,
    }
    data = b"".join([write(meta, table), *head, *codestreams, *tail])
    return Compacted(data, codec, len(original), sha256, len(codestreams), transfer_syntax)


def _frames_form(original: bytes, sha256: bytes, location: PixelLocation,
                 codecs: Sequence[str]) -> Compacted | None:
    geometry, size = location.geometry, location.geometry.frame_size
    view = memoryview(original)
    frames = [view[location.offset + i * size:location.offset + (i + 1) * size]
              for i in range(geometry.frames)]
    sample = sorted({0, geometry.frames // 2, geometry.frames - 1})  # the codec is chosen on these
    trials: dict[str, dict[int, bytes]] = {}
    for codec in codecs:
        try:
            trials[codec] = {i: encode_frame(codec, frames[i], geometry) for i in sample}
        except Exception as exc:  # the codec refuses this layout: the others may not
            log.info("compact: %s cannot encode %s: %s", codec, geometry, exc)
    if not trials:
        return None
    best = min(trials, key=lambda c: sum(len(b) for b in trials[c].values()))
    chosen = trials[best]
    codestreams = [chosen[i] if i in chosen else encode_frame(best, frames[i], geometry)
                   for i in range(geometry.frames)]
    name = "zstd-frames" if best == "zstd" else best
    served = served_transfer_syntax(best, geometry, codestreams[0])
    if served is not None and not all(fits_bits_stored(frame, geometry) for frame in frames):
        served = None
    return _assemble(original, sha256, name, location, codestreams, served)


def _reconstructs(data: bytes, original: bytes) -> bool:
    """Decode ``data`` back and compare with the original, byte for byte (and by SHA-256 inside)."""
    view, position = memoryview(original), 0
    try:
        for part in reconstruct_stream(data):
            if view[position:position + len(part)] != part:
                return False
            position += len(part)
    except CompactCorrupt:
        return False
    return position == len(original)


def compact(original: bytes, *, codecs: Sequence[str] = DEFAULT_CODECS,
            min_saving: float = MIN_SAVING) -> Compacted | None:
    """A compact form of ``original`` proven to decode back to it, or None when none saves ``min_saving``.

    Native Pixel Data gets frames in whichever of ``codecs`` (from ALL_CODECS) is smallest on a sample of
    frames; anything else, or a frame form that saves too little or fails its check, the whole file in
    zstd. With no codecs, only the whole-file form is tried. Never raises for what the bytes contain.
    """
    unknown = set(codecs) - set(ALL_CODECS)
    if unknown:
        raise ValueError(f"unknown codecs {sorted(unknown)}; known: {ALL_CODECS}")
    original = bytes(original)
    sha256 = hashlib.sha256(original).digest()
    limit = len(original) * (1 - min_saving)
    location = locate_pixel_data(original) if codecs else None
    if location is not None:
        try:
            built = _frames_form(original, sha256, location, codecs)
        except Exception as exc:  # a codec failing on one frame of many: the whole-file form
            log.warning("compact: frame codec failed, whole-file form instead: %s", exc)
            built = None
        if built is not None and built.compact_size < limit:
            if _reconstructs(built.data, original):
                return built
            log.warning("compact: %s did not reconstruct exactly; whole-file form instead", built.codec)
    whole = _assemble(original, sha256, "zstd", None, [], None)
    if whole.compact_size < limit and _reconstructs(whole.data, original):
        return whole
    return None
