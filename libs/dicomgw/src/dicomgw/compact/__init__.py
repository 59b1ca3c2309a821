"""Compact originals (issue 12): a lossless, byte-exact, smaller stored form of one PS3.10 file.

``compact(original)`` keeps every byte that is not pixel data verbatim (zstd) and encodes each frame of
a native Pixel Data value with a lossless image codec over its raw stored bits, choosing per object the
smallest of ``codecs`` (JPEG-LS, HTJ2K, JPEG XL or zstd by default). Encapsulated Pixel Data whose items
are JPEG bitstreams (baseline, progressive) keeps them in JPEG XL by lossless JPEG recompression, when
that is smaller than zstd of the whole file. Anything else (other encapsulated syntaxes, deflated, 1- or
32-bit, float, undefined lengths, not DICOM at all) is the whole file in zstd. Nothing is returned that
has not been decoded back into the identical bytes first, and nothing that does not save MIN_SAVING.

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
    jpeg_to_jxl,
    jxl_to_jpeg,
    served_transfer_syntax,
    zstd_compress,
)
from dicomgw.compact.container import (
    CHUNK_BYTES,
    HEADER_PROBE_BYTES,
    JPEG_JXL,
    PREAMBLE_BYTES,
    RAW,
    ZSTD,
    CompactCorrupt,
    Header,
    RangeReader,
    decode_frame,
    header_length,
    is_compact,
    read_header,
    reconstruct,
    reconstruct_stream,
    segment_rows,
    write,
)
from dicomgw.compact.locate import PixelLocation, locate_fragments, locate_pixel_data

__all__ = [
    "ALL_CODECS",
    "DEFAULT_CODECS",
    "HEADER_PROBE_BYTES",
    "JPEGXL_MARGIN",
    "JPEGXL_MIN_SAVED",
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
# stores 15 % less (ratio 4.45 against 3.80; zlib of the whole file, Orthanc's, 2.46). JPEG XL (effort 2)
# stores a fifth less than HTJ2K on colour ultrasound (the bench corpus's 43 MB cine: 5.0 MB against
# 6.4) and a quarter to a third less than zstd on some palette and colour ultrasound, about what JPEG-LS
# stores on grey images. It decodes a frame 2 to 5 times slower than the others (600x800 RGB: ~16 ms,
# HTJ2K ~5) and few viewers take its frames as they are, so it is kept only when its sample frames are
# JPEGXL_MARGIN smaller than the best of the others and save JPEGXL_MIN_SAVED bytes a frame: on the bench
# corpus (bench/compaction.py) that stores 0.1 % more than taking it whenever smaller, with 3 objects in
# JPEG XL instead of 15 and the native frame latency (p50) where it was without JPEG XL.
DEFAULT_CODECS: tuple[str, ...] = ("jpegls", "htj2k", "jpegxl", "zstd")
ALL_CODECS: tuple[str, ...] = FRAME_CODECS
MIN_SAVING = 0.05
JPEGXL_MARGIN = 0.15
JPEGXL_MIN_SAVED = 16 << 10  # bytes a frame
# A frame of a whole-file form is cut out of the rebuilt original, and JPEG XL rebuilds JPEG at ~15 MB/s
# (a 0.8 MB photograph in ~55 ms): with more JPEG items (frames) than this, every frame request would
# pay for all of them. Multi-frame JPEG stays whole-file zstd, which also finds what repeats from frame
# to frame of a cine loop (per-item JPEG XL stores 40 to 55 % more on the bench corpus's two).
JPEG_ITEMS_MAX = 1


@dataclass(frozen=True)
class Compacted:
    """A compact form and the facts about it a caller indexes."""

    data: bytes
    # jpegls | htj2k | jpegxl | zstd-frames (each frame zstd): frames apart;
    # zstd (the whole file) | jpeg-jxl (its JPEG items in JPEG XL, the rest zstd): whole-file forms
    codec: str
    original_size: int
    original_sha256: bytes
    frames: int  # 0 for the whole-file forms
    transfer_syntax: str | None  # frame codestreams are valid in it as they are (None: decode first)

    @property
    def compact_size(self) -> int:
        return len(self.data)


Piece = tuple[bytes, int, str]  # stored bytes, original length, segment kind


def _chunks(data: memoryview, raw_if_larger: bool = False) -> list[Piece]:
    """``data`` in zstd chunks of CHUNK_BYTES; with ``raw_if_larger``, a chunk zstd does not shrink (a
    JPEG item's 8-byte header) kept as it is."""
    pieces: list[Piece] = []
    for start in range(0, len(data), CHUNK_BYTES):
        chunk = data[start:start + CHUNK_BYTES]
        part = zstd_compress(chunk)
        if raw_if_larger and len(part) >= len(chunk):
            pieces.append((bytes(chunk), len(chunk), RAW))
        else:
            pieces.append((part, len(chunk), ZSTD))
    return pieces


def _assemble(original: bytes, sha256: bytes, codec: str, location: PixelLocation | None,
              head: list[Piece], codestreams: list[bytes], tail: list[Piece],
              transfer_syntax: str | None) -> Compacted:
    start, length = (location.offset, location.length) if location else (len(original), 0)
    position, head_segments, table, tail_segments = 0, [], [], []
    for stored, size, kind in head:
        head_segments.append((position, len(stored), size, kind))
        position += len(stored)
    for codestream in codestreams:
        table.append((position, len(codestream), zlib.crc32(codestream)))
        position += len(codestream)
    for stored, size, kind in tail:
        tail_segments.append((position, len(stored), size, kind))
        position += len(stored)
    meta: dict[str, Any] = {
        "codec": codec, "original_size": len(original), "sha256": sha256.hex(),
        "pixel_offset": start, "pixel_length": length,
        "geometry": asdict(location.geometry) if location else None, "transfer_syntax": transfer_syntax,
        "head": segment_rows(head_segments), "tail": segment_rows(tail_segments), "body_length": position,
    }
    data = b"".join([write(meta, table), *(p[0] for p in head), *codestreams, *(p[0] for p in tail)])
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
    sizes = {codec: sum(len(b) for b in trial.values()) for codec, trial in trials.items()}
    best = min(sizes, key=lambda c: sizes[c])
    others = [c for c in sizes if c != "jpegxl"]
    if best == "jpegxl" and others:
        runner_up = min(others, key=lambda c: sizes[c])
        if sizes["jpegxl"] > (1 - JPEGXL_MARGIN) * sizes[runner_up] or (
                sizes[runner_up] - sizes["jpegxl"] < JPEGXL_MIN_SAVED * len(sample)):
            best = runner_up
    chosen = trials[best]
    codestreams = [chosen[i] if i in chosen else encode_frame(best, frames[i], geometry)
                   for i in range(geometry.frames)]
    name = "zstd-frames" if best == "zstd" else best
    served = served_transfer_syntax(best, geometry, codestreams[0])
    if served is not None and not all(fits_bits_stored(frame, geometry) for frame in frames):
        served = None
    return _assemble(original, sha256, name, location, _chunks(view[:location.offset]), codestreams,
                     _chunks(view[location.offset + location.length:]), served)


def _jpeg_form(original: bytes, sha256: bytes, items: list[tuple[int, int]], beat: int,
               check_each: bool = False) -> Compacted | None:
    """The original with each JPEG item of its encapsulated Pixel Data in JPEG XL (lossless JPEG
    recompression), every other byte in zstd or raw, in order; None when there are more than
    JPEG_ITEMS_MAX, no item recompresses smaller, or the form would not be smaller than ``beat`` (zstd
    of the whole file). ``check_each``: decode each item back before keeping it (the retry after a
    form that failed its check)."""
    view = memoryview(original)
    jpegs = [(offset, length) for offset, length in items[1:]  # the first is the Basic Offset Table
             if length > 2 and view[offset:offset + 2] == b"\xff\xd8"]
    if not jpegs or len(jpegs) > JPEG_ITEMS_MAX:
        return None
    # one item in JPEG XL tells how much the rest would shrink: give up early when it cannot pay
    offset, length = jpegs[len(jpegs) // 2]
    probe = jpeg_to_jxl(view[offset:offset + length])
    if probe is None or len(probe) * sum(n for _, n in jpegs) >= beat * length:
        return None
    pieces: list[Piece] = []
    position = 0
    for offset, length in jpegs:
        item = view[offset:offset + length]
        jxl = probe if (offset, length) == jpegs[len(jpegs) // 2] else jpeg_to_jxl(item)
        if jxl is None or len(jxl) >= length:
            continue
        if check_each:
            try:
                if jxl_to_jpeg(jxl, length) != item:
                    continue
            except Exception:  # libjxl cannot rebuild what it wrote: the item stays as it is
                continue
        pieces += _chunks(view[position:offset], raw_if_larger=True)
        pieces.append((jxl, length, JPEG_JXL))
        position = offset + length
    if not any(kind == JPEG_JXL for _, _, kind in pieces):
        return None
    pieces += _chunks(view[position:], raw_if_larger=True)
    built = _assemble(original, sha256, "jpeg-jxl", None, pieces, [], [], None)
    return built if built.compact_size < beat else None


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


def compact(original: bytes, *, codecs: Sequence[str] = DEFAULT_CODECS, jpeg: bool = True,
            min_saving: float = MIN_SAVING) -> Compacted | None:
    """A compact form of ``original`` proven to decode back to it, or None when none saves ``min_saving``.

    Native Pixel Data gets frames in whichever of ``codecs`` (from ALL_CODECS) is smallest on a sample of
    frames; anything else, or a frame form that saves too little or fails its check, the smaller of the
    whole file in zstd and (``jpeg``) its JPEG items in JPEG XL. With no codecs, native Pixel Data is not
    looked for; with no codecs and not ``jpeg``, only the whole file in zstd is tried. Never raises for
    what the bytes contain.
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
    whole = _assemble(original, sha256, "zstd", None, _chunks(memoryview(original)), [], [], None)
    items = locate_fragments(original) if jpeg and location is None else None
    if items:
        for check_each in (False, True):
            try:
                recompressed = _jpeg_form(original, sha256, items, min(whole.compact_size, int(limit)),
                                          check_each)
            except Exception as exc:  # the codec failing: the whole file in zstd
                log.warning("compact: JPEG recompression failed, whole file in zstd instead: %s", exc)
                break
            if recompressed is None:
                break
            if _reconstructs(recompressed.data, original):
                return recompressed
            log.warning("compact: jpeg-jxl did not reconstruct exactly%s", "" if check_each else "; retried")
    if whole.compact_size < limit and _reconstructs(whole.data, original):
        return whole
    return None
