"""The attributes a volume is made from, and where the pixels are, read straight from a DICOM object's
bytes: the hot path of ``volume.read`` for the common case, an uncompressed little-endian image.

pydicom parses every element of an object (and validates its file meta) into a Dataset whose attribute
access costs microseconds each: on a first epoch of 200-slice CT volumes, its parse and look-ups held the
GIL for half of the client's time (py-spy), while the threads fetching the next objects waited for it.
This reader walks the top-level elements once, keeps the raw values of the few it needs (``WANTED``),
and stops at Pixel Data. It declines (None: the caller parses with pydicom) anything it does not read
with certainty: no preamble and ``DICM``, another transfer syntax, an element whose VR is not the one it
expects, functional groups or a Modality LUT (their values are per frame or a table), float pixel data,
encapsulated or truncated data, a malformed length. The values it gives are pydicom's for the same
objects, checked over pydicom's and pydicom-data's test files in ``tests/unit/test_rawread.py``.
"""

from __future__ import annotations

import struct
from typing import Any

IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"

# tag -> (keyword, VR) of what is kept; in Implicit VR the VR is this one
WANTED: dict[int, tuple[str, str]] = {
    0x00080018: ("SOPInstanceUID", "UI"),
    0x00180050: ("SliceThickness", "DS"),
    0x00180086: ("EchoNumbers", "IS"),
    0x00180088: ("SpacingBetweenSlices", "DS"),
    0x00200032: ("ImagePositionPatient", "DS"),
    0x00200037: ("ImageOrientationPatient", "DS"),
    0x00200052: ("FrameOfReferenceUID", "UI"),
    0x00209128: ("TemporalPositionIndex", "UL"),
    0x00280002: ("SamplesPerPixel", "US"),
    0x00280004: ("PhotometricInterpretation", "CS"),
    0x00280008: ("NumberOfFrames", "IS"),
    0x00280010: ("Rows", "US"),
    0x00280011: ("Columns", "US"),
    0x00280030: ("PixelSpacing", "DS"),
    0x00280100: ("BitsAllocated", "US"),
    0x00280101: ("BitsStored", "US"),
    0x00280103: ("PixelRepresentation", "US"),
    0x00281052: ("RescaleIntercept", "DS"),
    0x00281053: ("RescaleSlope", "DS"),
}
# what makes the object one this reader leaves to pydicom
DECLINED = frozenset({
    0x52009229,  # Shared Functional Groups Sequence
    0x52009230,  # Per-frame Functional Groups Sequence
    0x00283000,  # Modality LUT Sequence
    0x7FE00008,  # Float Pixel Data
    0x7FE00009,  # Double Float Pixel Data
})
PIXEL_DATA = 0x7FE00010
# explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2)
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT",
                       b"UV"})
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
# deeper nesting than this is declined (a malformed or hostile object must not exhaust the stack)
_MAX_DEPTH = 32


class Declined(Exception):
    """The object is not one this reader reads with certainty."""


class Attributes:
    """The kept attributes by keyword, valued as pydicom gives them to ``volume``: a number, a string,
    or a list when there are several values; absent (``default``) when empty."""

    __slots__ = ("_values", "transfer_syntax")

    def __init__(self, values: dict[str, Any], transfer_syntax: str) -> None:
        self._values = values
        self.transfer_syntax = transfer_syntax

    def get(self, key: str, default: Any = None) -> Any:
        value = self._values.get(key)
        return default if value is None else value

    def __contains__(self, key: str) -> bool:
        return self._values.get(key) is not None


def read(data: bytes) -> tuple[Attributes, memoryview] | None:
    """(the kept attributes, the Pixel Data's value as a view of ``data``), or None (see the module)."""
    try:
        return _read(data)
    except (Declined, struct.error, UnicodeDecodeError, ValueError, RecursionError):
        return None


def pixel_data_at(data: bytes, pos: int, syntax: str) -> memoryview | None:
    """The value of the top-level Pixel Data element that starts at ``pos`` (a view of ``data``), in
    Implicit or Explicit VR Little Endian with a defined length, OB or OW; None otherwise."""
    if syntax not in (IMPLICIT_VR_LE, EXPLICIT_VR_LE):
        return None
    try:
        tag, vr, length, start = _header(data, pos, syntax == EXPLICIT_VR_LE)
    except (Declined, struct.error):
        return None
    if (tag != PIXEL_DATA or length == _UNDEFINED or start + length > len(data)
            or (syntax == EXPLICIT_VR_LE and vr not in (b"OB", b"OW"))):
        return None
    return memoryview(data)[start:start + length]


def _header(data: bytes, pos: int, explicit: bool) -> tuple[int, bytes, int, int]:
    """(tag, VR or b"", value length, where the value starts) of the element at ``pos``."""
    group, element = struct.unpack_from("<HH", data, pos)
    tag = group << 16 | element
    if not explicit or group == 0xFFFE:  # items and delimiters have no VR in either encoding
        (length,) = struct.unpack_from("<I", data, pos + 4)
        return tag, b"", length, pos + 8
    vr = data[pos + 4:pos + 6]
    if vr in _LONG_VRS:
        (length,) = struct.unpack_from("<I", data, pos + 8)
        return tag, vr, length, pos + 12
    if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
        raise Declined(f"not an explicit VR at {pos}")
    (length,) = struct.unpack_from("<H", data, pos + 6)
    return tag, vr, length, pos + 8


def _skip_sequence(data: bytes, pos: int, explicit: bool, depth: int) -> int:
    """Where the undefined-length sequence whose first item is at ``pos`` ends (after its delimiter)."""
    if depth > _MAX_DEPTH:
        raise Declined("sequences nested too deep")
    while True:
        tag, _, length, pos = _header(data, pos, False)
        if tag == _SEQUENCE_END:
            return pos
        if tag != _ITEM:
            raise Declined(f"not an item at {pos - 8}")
        if length != _UNDEFINED:
            pos += length
            continue
        while True:  # an undefined-length item: its elements, up to the item's delimiter
            tag, vr, length, pos = _header(data, pos, explicit)
            if tag == _ITEM_END:
                break
            if length == _UNDEFINED:
                if explicit and vr not in (b"SQ", b"UN"):
                    raise Declined(f"undefined length of a {vr!r} at {pos}")
                # an undefined-length UN is a sequence in Implicit VR Little Endian (PS3.5 6.2.2)
                pos = _skip_sequence(data, pos, explicit and vr != b"UN", depth + 1)
            else:
                pos += length
            if pos > len(data):
                raise Declined("truncated")


def _value(raw: bytes, vr: str) -> Any:
    if vr == "US":
        if len(raw) != 2:
            raise Declined("a US of one value expected")
        return struct.unpack("<H", raw)[0]
    if vr == "UL":
        if len(raw) != 4:
            raise Declined("a UL of one value expected")
        return struct.unpack("<I", raw)[0]
    text = raw.decode("ascii").strip(" \0")
    if not text:
        return None
    if vr in ("UI", "CS"):
        return text
    parts = [part.strip(" ") for part in text.split("\\")]
    if any(not part for part in parts):
        raise Declined(f"an empty value among {text!r}")
    numbers = [int(part) if vr == "IS" else float(part) for part in parts]
    return numbers[0] if len(numbers) == 1 else numbers


def _read(data: bytes) -> tuple[Attributes, memoryview] | None:
    if len(data) < 132 or data[128:132] != b"DICM":
        return None
    pos, syntax = 132, None
    while pos + 8 <= len(data) and data[pos:pos + 2] == b"\x02\x00":  # the file meta: Explicit VR LE
        tag, _, length, start = _header(data, pos, True)
        if length == _UNDEFINED:
            return None
        if tag == 0x00020010:
            syntax = data[start:start + length].decode("ascii").strip(" \0")
        pos = start + length
    if syntax not in (IMPLICIT_VR_LE, EXPLICIT_VR_LE):
        return None
    explicit = syntax == EXPLICIT_VR_LE
    values: dict[str, Any] = {}
    while pos + 8 <= len(data):
        tag, vr, length, start = _header(data, pos, explicit)
        if tag == PIXEL_DATA:
            view = pixel_data_at(data, pos, syntax)
            return None if view is None else (Attributes(values, syntax), view)
        if tag in DECLINED or tag > PIXEL_DATA:
            return None
        if length == _UNDEFINED:
            if explicit and vr not in (b"SQ", b"UN"):
                return None
            pos = _skip_sequence(data, start, explicit and vr != b"UN", 1)
            continue
        if start + length > len(data):
            return None
        wanted = WANTED.get(tag)
        if wanted is not None:
            keyword, expected = wanted
            if explicit and vr.decode("ascii") != expected:
                return None
            values[keyword] = _value(data[start:start + length], expected)
        pos = start + length
    return None
