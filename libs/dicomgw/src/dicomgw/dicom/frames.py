"""Pixel data in another transfer syntax: decode frames, byte-swap big endian, re-encode instances.

Every function here is synchronous CPU work, meant to run off the event loop (``asyncio.to_thread``).
"Uncompressed" always means what Explicit VR Little Endian carries: little-endian samples, the stored
planar configuration, 1-bit samples packed eight to a byte (least significant bit first), and for
lossy JPEG in a YCbCr colour space, RGB (the codec converts; PS3.5 8.2.1 lets the decompressed image
change its photometric interpretation).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset, validate_file_meta
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder, pixel_array
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicomgw.errors import NotAcceptable, NotFound

EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
# Syntaxes whose decoded colour is the codec's business (YCbCr comes out as RGB)
LOSSY_JPEG = frozenset({"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"})
# Native syntaxes a whole instance can be re-encoded into
NATIVE_TARGETS = frozenset({ExplicitVRLittleEndian, ImplicitVRLittleEndian})
_SWAP_WIDTH = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}


class PixelDataUndecodable(NotAcceptable):
    """The stored pixel data cannot be decoded here, so it can be served only as stored."""

    title = "Pixel data cannot be decoded"


def pixel_options(pixel: dict[str, Any], transfer_syntax: str) -> dict[str, Any]:
    """The layout's Image Pixel description as pydicom decoder options for one frame."""
    return {
        "rows": pixel["Rows"],
        "columns": pixel["Columns"],
        "samples_per_pixel": pixel.get("SamplesPerPixel", 1),
        "bits_allocated": pixel["BitsAllocated"],
        "bits_stored": pixel.get("BitsStored", pixel["BitsAllocated"]),
        "pixel_representation": pixel.get("PixelRepresentation", 0),
        "photometric_interpretation": pixel.get("PhotometricInterpretation", "MONOCHROME2"),
        "planar_configuration": pixel.get("PlanarConfiguration", 0),
        "number_of_frames": 1,
        "transfer_syntax_uid": UID(transfer_syntax),
        "pixel_keyword": "PixelData",
    }


def swap_to_little_endian(data: bytes, bits_allocated: int) -> bytes:
    """Big-endian native samples as little-endian bytes (8- and 1-bit samples need no swap)."""
    width = {16: 2, 32: 4, 64: 8}.get(bits_allocated)
    if width is None:
        return data
    usable = len(data) - len(data) % width
    swapped = np.frombuffer(data, dtype=f">u{width}", count=usable // width).astype(f"<u{width}")
    return swapped.tobytes() + data[usable:]


def decode_frame_array(stored: bytes, transfer_syntax: str, pixel: dict[str, Any],
                       *, as_rgb: bool = False) -> np.ndarray:
    """One stored frame as an array (rows, columns[, samples]); YCbCr kept unless ``as_rgb``."""
    uid = UID(transfer_syntax)
    if uid == EXPLICIT_VR_BIG_ENDIAN:
        stored, uid = swap_to_little_endian(stored, pixel["BitsAllocated"]), ExplicitVRLittleEndian
    options = pixel_options(pixel, uid)
    try:
        decoder = get_decoder(uid)
    except NotImplementedError as exc:
        raise PixelDataUndecodable(f"frames in {uid.name} cannot be decoded here") from exc
    source = encapsulate([stored]) if uid.is_encapsulated else stored
    raw = not (as_rgb or uid in LOSSY_JPEG)
    try:
        arr, _ = decoder.as_array(source, index=0, raw=raw, **options)
    except Exception as exc:  # codecs raise anything from ValueError to RuntimeError
        raise PixelDataUndecodable(f"a frame in {uid.name} could not be decoded: {exc}") from exc
    return arr


def decode_frame(stored: bytes, transfer_syntax: str, pixel: dict[str, Any]) -> bytes:
    """One stored frame as uncompressed little-endian bytes."""
    uid = UID(transfer_syntax)
    if not uid.is_encapsulated and pixel["BitsAllocated"] != 1:
        if uid == EXPLICIT_VR_BIG_ENDIAN:
            return swap_to_little_endian(stored, pixel["BitsAllocated"])
        return stored
    return array_bytes(decode_frame_array(stored, transfer_syntax, pixel),
                       pixel["BitsAllocated"])


def array_bytes(arr: np.ndarray, bits_allocated: int) -> bytes:
    """A decoded frame as Explicit VR Little Endian pixel bytes."""
    if bits_allocated == 1:
        return bytes(np.packbits(arr.astype(np.uint8).ravel(), bitorder="little").tobytes())
    return bytes(arr.astype(arr.dtype.newbyteorder("<")).tobytes())


def read_dataset(original: bytes) -> Dataset:
    """A whole stored original (a PS3.10 file, possibly deflated) as a pydicom Dataset."""
    try:
        return pydicom.dcmread(io.BytesIO(original))
    except Exception as exc:
        raise PixelDataUndecodable(f"the stored instance cannot be read: {exc}") from exc


def frame_count(ds: Dataset) -> int:
    value = ds.get("NumberOfFrames")
    return int(value) if value not in (None, "") and int(value) > 0 else 1


def whole_frame_arrays(ds: Dataset, indexes: list[int], *, as_rgb: bool) -> list[np.ndarray]:
    """Frames (0-based) of a whole dataset decoded by pydicom; NotFound when out of range."""
    if not any(tag in ds for tag in (0x7FE00010, 0x7FE00008, 0x7FE00009)):
        raise NotFound("the instance has no pixel data")
    n = frame_count(ds)
    if any(i >= n for i in indexes):
        raise NotFound(f"the instance has {n} frame(s)")
    out = []
    for index in indexes:
        try:
            out.append(pixel_array(ds, index=index if n > 1 else None, raw=not as_rgb))
        except Exception as exc:
            raise PixelDataUndecodable(f"the pixel data could not be decoded: {exc}") from exc
    return out


def frames_from_whole(original: bytes, indexes: list[int]) -> list[bytes]:
    """Frames (0-based) decoded from a whole instance, for layouts without frame byte ranges."""
    ds = read_dataset(original)
    lossy = ds.file_meta.TransferSyntaxUID in LOSSY_JPEG
    arrays = whole_frame_arrays(ds, indexes, as_rgb=lossy)
    return [array_bytes(arr, int(ds.BitsAllocated)) for arr in arrays]


def _swap_binary_values(ds: Dataset) -> None:
    """Swap OW/OF/OL/OD/OV values read from a big-endian file (pydicom keeps them as raw bytes)."""

    bits = int(ds.get("BitsAllocated") or 8)

    def swap(dataset: Dataset, element: Any) -> None:
        width = _SWAP_WIDTH.get(element.VR)
        if element.tag == 0x7FE00010 and element.VR == "OW" and bits > 16:
            width = bits // 8  # pydicom (and the files it reads) swap whole samples
        value = element.value
        if width and isinstance(value, bytes | bytearray) and len(value) % width == 0:
            element.value = np.frombuffer(value, dtype=f">u{width}").astype(f"<u{width}").tobytes()

    ds.walk(swap)


def to_native(original: bytes, transfer_syntax: str = ExplicitVRLittleEndian) -> bytes:
    """The whole instance re-encoded in a native little-endian syntax, pixel data decoded."""
    if transfer_syntax not in NATIVE_TARGETS:
        raise NotAcceptable(f"instances cannot be re-encoded in {transfer_syntax}")
    ds = read_dataset(original)
    stored = ds.file_meta.TransferSyntaxUID
    if stored.is_encapsulated and "PixelData" in ds:
        try:
            ds.decompress(generate_instance_uid=False)  # same instance, another encoding
        except Exception as exc:
            raise PixelDataUndecodable(f"the pixel data could not be decoded: {exc}") from exc
    elif not stored.is_little_endian:
        _swap_binary_values(ds)
    return _write(ds, UID(transfer_syntax))


def _write(ds: Dataset, transfer_syntax: UID) -> bytes:
    meta = FileMetaDataset(ds.file_meta)
    meta.TransferSyntaxUID = transfer_syntax
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    validate_file_meta(meta, enforce_standard=True)
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    out = io.BytesIO()
    # force_encoding: pydicom refuses to change endianness otherwise; the meta group and preamble
    # set above make the output a complete PS3.10 file all the same
    pydicom.dcmwrite(out, ds, implicit_vr=transfer_syntax.is_implicit_VR, little_endian=True,
                     force_encoding=True)
    return out.getvalue()
