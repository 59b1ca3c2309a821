"""Frames and whole instances in another transfer syntax: decode, byte-swap, re-encode (CPU work).

Every function here is synchronous and meant to run off the event loop (asyncio.to_thread).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pydicom
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder, pixel_array
from pydicom.uid import UID, ExplicitVRLittleEndian

from dicomgw.errors import NotAcceptable


def pixel_options(pixel: dict[str, Any]) -> dict[str, Any]:
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
    }


def decode_frame(stored: bytes, transfer_syntax: str, pixel: dict[str, Any]) -> bytes:
    """One frame as uncompressed little-endian bytes (what Explicit VR Little Endian carries)."""
    uid = UID(transfer_syntax)
    if not uid.is_encapsulated:
        if uid.is_little_endian:
            return stored
        bits = pixel["BitsAllocated"]
        if bits <= 8:
            return stored
        dtype = {16: ">u2", 32: ">u4", 64: ">u8"}[bits]
        return np.frombuffer(stored, dtype=dtype).astype(dtype.replace(">", "<")).tobytes()
    try:
        decoder = get_decoder(uid)
    except NotImplementedError as exc:
        raise NotAcceptable(f"frames of {uid.name} cannot be decompressed here") from exc
    if not decoder.is_available:
        raise NotAcceptable(f"no decoder installed for {uid.name}")
    options = pixel_options(pixel)
    if options["photometric_interpretation"].startswith("YBR") and uid.is_lossy:
        # decoders return RGB for lossy YCbCr; say so, as the uncompressed frame will be RGB
        options["as_rgb"] = True
    # as_array (not as_buffer) so that signed samples come out sign-extended, as pydicom reads them
    arr, _ = decoder.as_array(encapsulate([stored]), index=0, **options)
    return bytes(arr.astype(arr.dtype.newbyteorder("<")).tobytes())


def frames_from_whole(original: bytes, indexes: list[int]) -> tuple[list[bytes], int]:
    """Frames (0-based indexes) decoded from a whole instance, for layouts without frame ranges."""
    ds = pydicom.dcmread(io.BytesIO(original))
    n = int(ds.get("NumberOfFrames", 1) or 1)
    out = []
    for index in indexes:
        if index >= n:
            break
        arr = pixel_array(io.BytesIO(original), index=index)
        if ds.BitsAllocated == 1:
            arr = arr.astype(np.uint8)
        out.append(arr.astype(arr.dtype.newbyteorder("<")).tobytes())
    return out, n


def to_explicit_little_endian(original: bytes) -> bytes:
    """The whole instance re-encoded in Explicit VR Little Endian, pixel data decompressed."""
    ds = pydicom.dcmread(io.BytesIO(original))
    ts = ds.file_meta.TransferSyntaxUID
    if ts.is_encapsulated and "PixelData" in ds:
        ds.decompress()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True, implicit_vr=False, little_endian=True)
    return out.getvalue()
