"""The compact container: a small self-describing header, then the original's bytes in order.

Layout (all integers little endian)::

    0   4  magic b"DGWC"
    4   1  format version: 1, or 2 when a body segment is other than zstd (below)
    5   3  zero
    8   4  header length H: bytes from 0 to the start of the body
    12  4  JSON length J
    16  4  CRC-32 of bytes 0-15 and 20-H (the whole header but this field)
    20  J  JSON: codec, original size and SHA-256, where the frames were in the original, frame geometry,
           served transfer syntax, and the body's segments ("head", "tail": [offset, length, size] for
           zstd; version 2 also [offset, length, size, kind], kind "raw" or "jpeg-jxl")
    20+J   frame table: per frame <offset u64, length u64, CRC-32 u32 of the codestream> (20 bytes)
    H   .. body: head segments (zstd of the original before the Pixel Data value, in chunks of at most
           CHUNK_BYTES), one codestream per frame, tail segments (zstd of the bytes after the frames)

The whole-file forms keep no frames apart: codec "zstd" is the original in zstd chunks; "jpeg-jxl"
(version 2) is the original's JPEG items in JPEG XL ("jpeg-jxl" segments: lossless JPEG recompression,
``codecs.jpeg_to_jxl``), the bytes around them in zstd chunks or "raw" (kept as they are: item headers).
A version 1 container is written whenever a form needs nothing else, so a reader that knows only
version 1 still reads every form but "jpeg-jxl" (and refuses that one loudly); this reader reads both.

Offsets in the JSON and the table count from the body. The body holds the original's bytes in their
order, so a reader streams it front to back (``reconstruct_stream``) holding one chunk or frame at a time.
A frame costs two ranged reads: HEADER_PROBE_BYTES (which hold every header but those of very long
multi-frame objects; ``header_length`` tells from the first 20 bytes), then ``Header.frame_range(i)``.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from dicomgw.compact.codecs import FRAME_CODECS, decode_frame_bytes, jxl_to_jpeg, zstd_decompress
from dicomgw.compact.locate import Geometry

MAGIC = b"DGWC"
VERSION = 1
VERSION_KINDS = 2  # body segments other than zstd
VERSIONS = frozenset({VERSION, VERSION_KINDS})
PREAMBLE_BYTES = 20
HEADER_PROBE_BYTES = 64 << 10
CHUNK_BYTES = 8 << 20
_PREAMBLE = struct.Struct("<4sB3xLLL")
_FRAME = struct.Struct("<QQL")
ZSTD, RAW, JPEG_JXL = "zstd", "raw", "jpeg-jxl"  # body segment kinds
SEGMENT_KINDS = frozenset({ZSTD, RAW, JPEG_JXL})
WHOLE_FILE_CODECS = frozenset({"zstd", "jpeg-jxl"})  # no frames apart, no geometry
_CODECS = frozenset({*(c if c != "zstd" else "zstd-frames" for c in FRAME_CODECS), *WHOLE_FILE_CODECS})

Segment = tuple[int, int, int, str]  # offset in the body, stored length, original length, kind
RangeReader = Callable[[int, int], bytes]  # read(offset, length) -> exactly that many bytes


class CompactCorrupt(ValueError):
    """A compact object that does not give back the original: damaged header, codestream or digest."""


@dataclass(frozen=True)
class Header:
    """What the header says: enough to read one frame, or to rebuild the whole original."""

    codec: str  # jpegls | htj2k | jpegxl | zstd-frames (frames stored apart) | zstd | jpeg-jxl (whole file)
    original_size: int
    original_sha256: bytes
    header_length: int
    body_length: int
    pixel_offset: int  # where the frames start in the original
    pixel_length: int  # frames x frame size
    geometry: Geometry | None  # None for the whole-file form
    transfer_syntax: str | None  # the frames' codestreams are valid in it as they are
    head: tuple[Segment, ...]
    tail: tuple[Segment, ...]
    frame_table: tuple[tuple[int, int, int], ...]  # (offset in the body, length, CRC-32)
    version: int = VERSION

    @property
    def frames(self) -> int:
        return len(self.frame_table)

    @property
    def frame_codec(self) -> str:
        return "zstd" if self.codec == "zstd-frames" else self.codec

    def frame_range(self, index: int) -> tuple[int, int]:
        """(offset, length) of frame ``index``'s codestream in the container (0-based)."""
        if not 0 <= index < self.frames:
            raise IndexError(f"frame {index} of {self.frames}")
        offset, length, _ = self.frame_table[index]
        return self.header_length + offset, length


def is_compact(prefix: bytes) -> bool:
    """Whether ``prefix`` starts like a compact container this version reads.

    Cheap and not proof: a PS3.10 file's first 128 bytes are an arbitrary preamble that could spell the
    same. The index records which form was stored; reading one is proven by the header CRC and, for the
    whole object, by the SHA-256 of the result (``reconstruct`` raises CompactCorrupt otherwise).
    """
    if len(prefix) < PREAMBLE_BYTES:
        return False
    magic, version, header_len, json_len, _ = _PREAMBLE.unpack_from(prefix)
    return bool(magic == MAGIC and version in VERSIONS and prefix[5:8] == b"\0\0\0"
                and header_len >= PREAMBLE_BYTES + json_len)


def header_length(prefix: bytes) -> int:
    """How many bytes from the start hold the header, read from the first PREAMBLE_BYTES."""
    if not is_compact(prefix):
        raise CompactCorrupt("not a compact container (magic, version or lengths)")
    return int(_PREAMBLE.unpack_from(prefix)[2])


def _crc(header: bytes) -> int:
    return zlib.crc32(header[PREAMBLE_BYTES:], zlib.crc32(header[:16]))


def segment_rows(segments: list[Segment]) -> list[list[int | str]]:
    """The JSON rows of ``segments``: zstd ones as version 1 wrote them, the others with their kind."""
    return [[o, n, s] if kind == ZSTD else [o, n, s, kind] for o, n, s, kind in segments]


def write(meta: dict[str, Any], frame_table: list[tuple[int, int, int]]) -> bytes:
    """The header bytes for ``meta`` (JSON-able, its segments as ``segment_rows``) and the frame table;
    the body follows them. Version 2 only when a segment has a kind other than zstd."""
    text = json.dumps(meta, separators=(",", ":"), sort_keys=True).encode()
    table = b"".join(_FRAME.pack(*row) for row in frame_table)
    length = PREAMBLE_BYTES + len(text) + len(table)
    kinds = any(len(row) > 3 for row in (*meta.get("head", ()), *meta.get("tail", ())))
    version = VERSION_KINDS if kinds else VERSION
    header = bytearray(_PREAMBLE.pack(MAGIC, version, length, len(text), 0) + text + table)
    struct.pack_into("<L", header, 16, _crc(bytes(header)))
    return bytes(header)


def _segments(value: Any, version: int) -> tuple[Segment, ...]:
    out: list[Segment] = []
    for row in value:
        if len(row) == 3:
            out.append((int(row[0]), int(row[1]), int(row[2]), ZSTD))
        elif len(row) == 4 and version >= VERSION_KINDS and row[3] in SEGMENT_KINDS - {ZSTD}:
            out.append((int(row[0]), int(row[1]), int(row[2]), str(row[3])))
        else:
            raise ValueError(f"bad segment {row!r} in a version {version} header")
        if min(out[-1][:3]) < 0 or (out[-1][3] == RAW and out[-1][1] != out[-1][2]):
            raise ValueError("negative segment, or a raw one whose lengths differ")
    return tuple(out)


def read_header(prefix: bytes) -> Header:
    """Parse and check the header at the start of ``prefix`` (at least ``header_length`` bytes)."""
    length = header_length(prefix)
    if len(prefix) < length:
        raise CompactCorrupt(f"header is {length} bytes, {len(prefix)} given")
    header = bytes(prefix[:length])
    _, version, _, json_len, crc = _PREAMBLE.unpack_from(header)
    if _crc(header) != crc:
        raise CompactCorrupt("header CRC mismatch")
    try:
        meta = json.loads(header[PREAMBLE_BYTES:PREAMBLE_BYTES + json_len])
        table_bytes = header[PREAMBLE_BYTES + json_len:]
        geometry = Geometry(**meta["geometry"]) if meta["geometry"] is not None else None
        result = Header(
            codec=str(meta["codec"]), original_size=int(meta["original_size"]),
            original_sha256=bytes.fromhex(meta["sha256"]), header_length=length,
            body_length=int(meta["body_length"]), pixel_offset=int(meta["pixel_offset"]),
            pixel_length=int(meta["pixel_length"]), geometry=geometry,
            transfer_syntax=meta["transfer_syntax"], head=_segments(meta["head"], version),
            tail=_segments(meta["tail"], version),
            frame_table=tuple(_FRAME.iter_unpack(table_bytes)), version=version)
        _check(result)
    except CompactCorrupt:
        raise
    except (KeyError, TypeError, ValueError, struct.error) as exc:
        raise CompactCorrupt(f"malformed header: {exc}") from exc
    return result


def _check(h: Header) -> None:
    """The header's numbers agree with each other; what they promise is checked while reading."""
    frames = h.geometry.frames if h.geometry else 0
    whole_file = h.codec in WHOLE_FILE_CODECS
    if h.codec not in _CODECS or whole_file != (h.geometry is None) or len(h.frame_table) != frames:
        raise CompactCorrupt("codec, geometry and frame table disagree")
    if h.codec == "jpeg-jxl" and h.version < VERSION_KINDS:
        raise CompactCorrupt("jpeg-jxl in a version 1 header")
    if len(h.original_sha256) != 32 or h.pixel_offset + h.pixel_length > h.original_size:
        raise CompactCorrupt("bad digest or pixel range")
    if h.pixel_length != (frames * h.geometry.frame_size if h.geometry else 0):
        raise CompactCorrupt("pixel length is not frames x frame size")
    if sum(s for _, _, s, _ in h.head) != h.pixel_offset or (
            sum(s for _, _, s, _ in h.tail) != h.original_size - h.pixel_offset - h.pixel_length):
        raise CompactCorrupt("segments do not cover the bytes around the frames")
    position = 0  # segments and frames lie back to back in the body, in the original's order
    spans = [(row[0], row[1]) for row in h.head] + [(row[0], row[1]) for row in h.frame_table] + [
        (row[0], row[1]) for row in h.tail]
    for offset, length in spans:
        if offset != position:
            raise CompactCorrupt("body segments out of order")
        position += length
    if position != h.body_length:
        raise CompactCorrupt("body length disagrees with its segments")


def decode_frame(header: Header, index: int, codestream: bytes) -> bytes:
    """Frame ``index``'s bytes exactly as in the original Pixel Data value, from its codestream
    (``Header.frame_range(index)`` of the container). Checked by the frame's CRC-32; the SHA-256 guards
    only the whole object."""
    header.frame_range(index)  # IndexError outside 0..frames-1
    _, length, crc = header.frame_table[index]
    if header.geometry is None or len(codestream) != length or zlib.crc32(codestream) != crc:
        raise CompactCorrupt(f"frame {index}: codestream length or CRC mismatch")
    try:
        return decode_frame_bytes(header.frame_codec, bytes(codestream), header.geometry)
    except Exception as exc:  # any codec error on a codestream that passed its CRC
        raise CompactCorrupt(f"frame {index}: {header.frame_codec} decode failed: {exc}") from exc


def _read_exact(read: RangeReader, offset: int, length: int) -> bytes:
    data = read(offset, length)
    if len(data) != length:
        raise CompactCorrupt(f"container truncated at {offset + len(data)}")
    return bytes(data)


def reconstruct_stream(source: bytes | RangeReader) -> Iterator[bytes]:
    """The original's bytes in order, one segment (a zstd chunk, a JPEG item) or frame at a time.

    ``source`` is the container, or ``read(offset, length)`` over it (a ranged GET, a file). Memory is
    one chunk (CHUNK_BYTES), or one frame or JPEG item plus its codestream. The last bytes are yielded
    before the SHA-256 check: a consumer keeps nothing until the iterator ends without raising
    CompactCorrupt.
    """
    read: RangeReader
    total: int | None = None
    if isinstance(source, bytes | bytearray | memoryview):
        view, total = memoryview(source), len(source)

        def read_view(offset: int, length: int) -> bytes:
            return bytes(view[offset:offset + length])

        read = read_view
    else:
        read = source
    header = read_header(_read_exact(read, 0, header_length(_read_exact(read, 0, PREAMBLE_BYTES))))
    if total is not None and total != header.header_length + header.body_length:
        raise CompactCorrupt(f"container is {total} bytes, header says "
                             f"{header.header_length + header.body_length}")

    def segment(offset: int, length: int, original: int, kind: str) -> bytes:
        stored = _read_exact(read, header.header_length + offset, length)
        if kind == RAW:
            return stored
        try:
            return jxl_to_jpeg(stored, original) if kind == JPEG_JXL else zstd_decompress(stored, original)
        except Exception as exc:  # the codec's own error, or a size other than recorded
            raise CompactCorrupt(f"{kind} segment at body offset {offset}: {exc}") from exc

    def parts() -> Iterator[bytes]:
        for head in header.head:
            yield segment(*head)
        for index in range(header.frames):
            yield decode_frame(header, index, _read_exact(read, *header.frame_range(index)))
        for tail in header.tail:
            yield segment(*tail)

    digest, size = hashlib.sha256(), 0
    for data in parts():
        digest.update(data)
        size += len(data)
        yield data
    if size != header.original_size or digest.digest() != header.original_sha256:
        raise CompactCorrupt("reconstructed bytes do not match the recorded SHA-256")


def reconstruct(data: bytes) -> bytes:
    """The original byte stream, identical (checked against the recorded size and SHA-256).

    Holds the container, then the parts and their join: twice the original at the peak; stream with
    ``reconstruct_stream`` when that matters.
    """
    return b"".join(reconstruct_stream(data))
