"""Where the Pixel Data value of a native PS3.10 file sits, or the items of an encapsulated one, found by
walking the file's own bytes.

The walk reads the file meta group, then the data set's top-level elements up to Pixel Data
(7FE0,0010), stepping over sequences of undefined length item by item. It never re-serialises
anything: the offset it returns is where the value starts in the bytes as received, and the compact
form keeps every other byte verbatim, so a wrong guess here costs only compression (the reconstruction
check in ``compact()`` rejects it), never a byte of the original.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
# transfer syntax -> (implicit VR, struct byte order)
_NATIVE = {
    IMPLICIT_VR_LITTLE_ENDIAN: (True, "<"),
    EXPLICIT_VR_LITTLE_ENDIAN: (False, "<"),
    EXPLICIT_VR_BIG_ENDIAN: (False, ">"),
}
# the data set itself is deflated: nothing in it can be walked as it is
_DEFLATED = frozenset({"1.2.840.10008.1.2.1.99"})
_PREAMBLE = 128
_TRANSFER_SYNTAX_UID = 0x00020010
_PIXEL_DATA = 0x7FE00010
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT",
                       b"UV"})
# Image Pixel attributes read on the way (all US except Number of Frames, IS, and the CS below)
_SAMPLES_PER_PIXEL, _PHOTOMETRIC, _PLANAR = 0x00280002, 0x00280004, 0x00280006
_NUMBER_OF_FRAMES, _ROWS, _COLUMNS, _BITS_ALLOCATED = 0x00280008, 0x00280010, 0x00280011, 0x00280100
_BITS_STORED, _HIGH_BIT, _PIXEL_REPRESENTATION = 0x00280101, 0x00280102, 0x00280103
_WANTED = frozenset({_SAMPLES_PER_PIXEL, _PHOTOMETRIC, _PLANAR, _NUMBER_OF_FRAMES, _ROWS, _COLUMNS,
                     _BITS_ALLOCATED, _BITS_STORED, _HIGH_BIT, _PIXEL_REPRESENTATION})
_MAX_DEPTH = 64


class _Unsupported(Exception):
    """The bytes are not a layout this walk vouches for."""


@dataclass(frozen=True)
class Geometry:
    """How the frames lie in the Pixel Data value: rows x columns x samples of bits_allocated bits.

    Bits Stored, High Bit and Pixel Representation do not change how a frame is encoded (raw bits);
    they decide whether its codestream means the same to a DICOM decoder (``codecs.fits_bits_stored``).
    """

    rows: int
    columns: int
    samples_per_pixel: int
    bits_allocated: int
    bits_stored: int
    high_bit: int
    pixel_representation: int
    planar_configuration: int
    big_endian: bool
    frames: int

    @property
    def frame_size(self) -> int:
        return self.rows * self.columns * self.samples_per_pixel * self.bits_allocated // 8


@dataclass(frozen=True)
class PixelLocation:
    """The frames' bytes in the original: ``offset`` is the first byte of the Pixel Data value and
    ``length`` is frames x frame size; a padding byte or any excess stays with the bytes after it."""

    offset: int
    length: int
    geometry: Geometry


def _element(data: bytes, pos: int, implicit: bool, order: str) -> tuple[int, bytes | None, int, int]:
    """(tag, VR or None, value length, value offset) of the element header at ``pos``."""
    if pos + 8 > len(data):
        raise _Unsupported("truncated element header")
    group, number = struct.unpack_from(order + "HH", data, pos)
    tag = group << 16 | number
    if implicit or group == 0xFFFE:  # items and delimiters never carry a VR
        return tag, None, struct.unpack_from(order + "L", data, pos + 4)[0], pos + 8
    vr = data[pos + 4:pos + 6]
    if not (vr.isalpha() and vr.isupper()):
        raise _Unsupported("not an explicit VR")
    if vr in _LONG_VRS:
        if pos + 12 > len(data):
            raise _Unsupported("truncated element header")
        return tag, vr, struct.unpack_from(order + "L", data, pos + 8)[0], pos + 12
    return tag, vr, struct.unpack_from(order + "H", data, pos + 6)[0], pos + 8


def _skip_sequence(data: bytes, pos: int, implicit: bool, order: str, depth: int) -> int:
    """Offset just past the Sequence Delimitation Item of an undefined-length value starting at pos."""
    if depth > _MAX_DEPTH:
        raise _Unsupported("sequences nested too deep")
    while True:
        tag, _, length, pos = _element(data, pos, True, order)
        if tag == _SEQUENCE_END:
            return pos
        if tag != _ITEM:
            raise _Unsupported("not an item")
        if length != _UNDEFINED:
            pos += length
            continue
        while True:  # an undefined-length item: its elements, then the Item Delimitation Item
            tag, vr, length, pos = _element(data, pos, implicit, order)
            if tag == _ITEM_END:
                break
            if length == _UNDEFINED:  # UN of undefined length holds implicit VR little endian (PS3.5 6.2.2)
                nested_implicit, nested_order = (True, "<") if vr == b"UN" else (implicit, order)
                pos = _skip_sequence(data, pos, nested_implicit, nested_order, depth + 1)
            else:
                pos += length
            if pos > len(data):
                raise _Unsupported("truncated item")


def _transfer_syntax(data: bytes) -> tuple[str, int]:
    """The file meta group's Transfer Syntax UID and the offset where the data set starts."""
    if data[_PREAMBLE:_PREAMBLE + 4] != b"DICM":
        raise _Unsupported("no PS3.10 preamble")
    pos, uid = _PREAMBLE + 4, None
    while pos + 8 <= len(data) and struct.unpack_from("<H", data, pos)[0] == 0x0002:
        tag, _, length, value = _element(data, pos, False, "<")
        if length == _UNDEFINED:
            raise _Unsupported("undefined length in the file meta group")
        if tag == _TRANSFER_SYNTAX_UID:
            uid = data[value:value + length].rstrip(b"\0 ").decode("ascii", "replace")
        pos = value + length
    if uid is None:
        raise _Unsupported("no Transfer Syntax UID")
    return uid, pos


def _integer(raw: bytes, vr_is_string: bool, order: str) -> int:
    if vr_is_string:
        return int(raw.rstrip(b"\0 ").decode("ascii"))
    if len(raw) != 2:
        raise _Unsupported("not a single US value")
    return int(struct.unpack(order + "H", raw)[0])


def _geometry(values: dict[int, bytes], order: str) -> Geometry:
    def number(tag: int, default: int | None = None) -> int:
        if tag not in values:
            if default is None:
                raise _Unsupported(f"no ({tag >> 16:04X},{tag & 0xFFFF:04X})")
            return default
        return _integer(values[tag], tag == _NUMBER_OF_FRAMES, order)

    photometric = values.get(_PHOTOMETRIC, b"").rstrip(b"\0 ").decode("ascii", "replace")
    bits_allocated = number(_BITS_ALLOCATED)
    bits_stored = number(_BITS_STORED, bits_allocated)
    geometry = Geometry(
        rows=number(_ROWS), columns=number(_COLUMNS), samples_per_pixel=number(_SAMPLES_PER_PIXEL, 1),
        bits_allocated=bits_allocated, bits_stored=bits_stored, high_bit=number(_HIGH_BIT, bits_stored - 1),
        pixel_representation=number(_PIXEL_REPRESENTATION, 0), planar_configuration=number(_PLANAR, 0),
        big_endian=order == ">", frames=number(_NUMBER_OF_FRAMES, 1))
    if geometry.bits_allocated not in (8, 16) or geometry.samples_per_pixel not in (1, 3):
        raise _Unsupported("only 8- and 16-bit samples, one or three per pixel")
    if geometry.rows < 1 or geometry.columns < 1 or geometry.frames < 1:
        raise _Unsupported("empty image")
    if geometry.planar_configuration not in (0, 1):
        raise _Unsupported("bad Planar Configuration")
    if "422" in photometric or "420" in photometric:  # subsampled: not rows x columns x 3 samples
        raise _Unsupported("subsampled colour")
    return geometry


def _pixel_data_element(data: bytes, implicit: bool, order: str, pos: int
                        ) -> tuple[bytes | None, int, int, dict[int, bytes]] | None:
    """(VR, value length, value offset, Image Pixel values read on the way) of the top-level Pixel Data
    element of the data set starting at ``pos``, or None when it has none."""
    values: dict[int, bytes] = {}
    while pos < len(data):
        tag, vr, length, value = _element(data, pos, implicit, order)
        if tag == _PIXEL_DATA:
            return vr, length, value, values
        if tag > _PIXEL_DATA:
            return None
        if length == _UNDEFINED:
            pos = _skip_sequence(data, value, implicit or vr == b"UN", "<" if vr == b"UN" else order, 0)
        else:
            if tag in _WANTED:
                values[tag] = data[value:value + length]
            pos = value + length
    return None


def locate_pixel_data(data: bytes) -> PixelLocation | None:
    """The top-level Pixel Data value of a native-syntax PS3.10 file, or None when there is none, its
    length is undefined (encapsulated), or the file is anything this walk does not vouch for."""
    try:
        uid, pos = _transfer_syntax(data)
        if uid not in _NATIVE:
            return None
        implicit, order = _NATIVE[uid]
        found = _pixel_data_element(data, implicit, order, pos)
        if found is None:
            return None
        vr, length, value, values = found
        if length == _UNDEFINED or value + length > len(data) or vr not in (None, b"OB", b"OW"):
            return None
        geometry = _geometry(values, order)
        needed = geometry.frames * geometry.frame_size
        return PixelLocation(value, needed, geometry) if needed <= length else None
    except (_Unsupported, struct.error, ValueError):
        return None


def locate_fragments(data: bytes) -> list[tuple[int, int]] | None:
    """(offset, length) of the value of each item of the top-level encapsulated Pixel Data of a PS3.10
    file, in order, the Basic Offset Table (the first item) included; None when the file has no such
    value (native, deflated) or is anything this walk does not vouch for.

    Encapsulated syntaxes are explicit VR little endian (PS3.5 A.4); the items lie back to back up to the
    Sequence Delimitation Item. A wrong answer costs only compression: the bytes are kept either way.
    """
    try:
        uid, pos = _transfer_syntax(data)
        if uid in _NATIVE or uid in _DEFLATED:
            return None
        found = _pixel_data_element(data, False, "<", pos)
        if found is None or found[1] != _UNDEFINED:
            return None
        items: list[tuple[int, int]] = []
        pos = found[2]
        while True:
            tag, _, length, value = _element(data, pos, True, "<")
            if tag == _SEQUENCE_END:
                return items
            if tag != _ITEM or length == _UNDEFINED or value + length > len(data):
                return None
            items.append((value, length))
            pos = value + length
    except (_Unsupported, struct.error, ValueError):
        return None
