"""Lossless codecs for one frame's raw stored bytes, JPEG recompression, and zstd for everything else.

A frame is encoded from its RAW STORED BITS: 16-bit samples as 16-bit integers whatever lies above
Bits Stored, 8-bit as 8-bit, colour as stored (a colour-by-plane frame is turned colour-by-pixel for
the codec and back), so decoding gives back the identical bytes. The codec's precision is Bits
Allocated (CharLS as imagecodecs drives it writes P = 8 or 16); whether a DICOM decoder then sees the
native frame's pixels is ``fits_bits_stored``'s question, answered per object.

A JPEG bitstream (an item of encapsulated Pixel Data) is kept in JPEG XL with its JPEG reconstruction
data (``jpeg_to_jxl``): libjxl's lossless JPEG recompression, which rebuilds the identical bytes
(ISO/IEC 18181-2), about a fifth smaller than the JPEG on real images.
"""

from __future__ import annotations

from collections.abc import Callable

import imagecodecs
import numpy as np

from dicomgw.compact.locate import Geometry

JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"
JPEG_XL_LOSSLESS = "1.2.840.10008.1.2.4.110"
# libjxl effort 1-9: 2 stores ~20 % less than JPEG-LS at ~60 % of its speed; 3 gains 2 % more at half
# the speed again, 1 loses much on ultrasound (bench/compact_codecs.py)
JPEGXL_EFFORT = 2
ZSTD_LEVEL_FRAME = 3
ZSTD_LEVEL = 6
ZSTD_LEVEL_SMALL = 19  # head and tail segments up to ZSTD_SMALL_BYTES: a few ms at most
ZSTD_SMALL_BYTES = 64 << 10
# frame codecs: pixels as an image; "zstd" keeps a frame's bytes as they are
IMAGE_CODECS = ("jpegls", "htj2k", "jpegxl")
FRAME_CODECS = (*IMAGE_CODECS, "zstd")


def zstd_compress(data: bytes | memoryview, level: int | None = None) -> bytes:
    if level is None:
        level = ZSTD_LEVEL_SMALL if len(data) <= ZSTD_SMALL_BYTES else ZSTD_LEVEL
    return bytes(imagecodecs.zstd_encode(bytes(data), level=level))


def zstd_decompress(data: bytes | memoryview, size: int) -> bytes:
    """The ``size`` bytes a zstd frame holds (bounded: a damaged frame header cannot ask for more)."""
    if size == 0:
        return b""
    out = bytes(imagecodecs.zstd_decode(bytes(data), out=size))
    if len(out) != size:
        raise ValueError(f"zstd segment gave {len(out)} bytes, {size} expected")
    return out


def jpeg_to_jxl(jpeg: bytes | memoryview) -> bytes | None:
    """The JPEG bitstream recompressed in JPEG XL, or None when libjxl does not take it (lossless,
    12-bit or arithmetic-coded JPEG, a truncated stream, not a JPEG). What it returns is not yet proven:
    the caller decodes it back (``jxl_to_jpeg``) before keeping it."""
    try:
        return bytes(imagecodecs.jpegxl_encode_jpeg(bytes(jpeg), numthreads=1))
    except Exception:  # libjxl refuses the stream: it stays as it is
        return None


def jxl_to_jpeg(codestream: bytes | memoryview, size: int) -> bytes:
    """The ``size`` bytes of the JPEG bitstream a ``jpeg_to_jxl`` codestream rebuilds."""
    out = bytes(imagecodecs.jpegxl_decode_jpeg(bytes(codestream), numthreads=1))
    if len(out) != size:
        raise ValueError(f"JPEG XL gave back a {len(out)}-byte JPEG, {size} expected")
    return out


def _dtype(geometry: Geometry) -> np.dtype[np.unsignedinteger]:
    if geometry.bits_allocated == 8:
        return np.dtype(np.uint8)
    return np.dtype(">u2" if geometry.big_endian else "<u2")


def _shape(geometry: Geometry) -> tuple[int, ...]:
    if geometry.samples_per_pixel == 1:
        return geometry.rows, geometry.columns
    return geometry.rows, geometry.columns, geometry.samples_per_pixel


def frame_array(raw: bytes | memoryview, geometry: Geometry, signed: bool = False) -> np.ndarray:
    """The frame as a native-endian array, colour-by-pixel; unsigned, or the same bits as signed."""
    native = np.dtype(f"{'i' if signed else 'u'}{geometry.bits_allocated // 8}")
    flat = np.frombuffer(raw, dtype=_dtype(geometry)).view(_dtype(geometry).str.replace("u", native.kind))
    flat = flat.astype(native, copy=False)
    if geometry.samples_per_pixel > 1 and geometry.planar_configuration == 1:
        planes = flat.reshape(geometry.samples_per_pixel, geometry.rows, geometry.columns)
        return np.ascontiguousarray(planes.transpose(1, 2, 0))
    return flat.reshape(_shape(geometry))


def array_bytes(array: np.ndarray, geometry: Geometry) -> bytes:
    """The inverse of frame_array: the frame's bytes exactly as stored."""
    shape = _shape(geometry)
    if array.shape != shape:
        raise ValueError(f"decoded shape {array.shape}, stored {shape}")
    if array.dtype.itemsize * 8 != geometry.bits_allocated or array.dtype.kind not in "ui":
        raise ValueError(f"decoded {array.dtype}, stored {geometry.bits_allocated}-bit")
    array = array.view(f"u{array.dtype.itemsize}")  # signed codestreams: the same bits
    if geometry.samples_per_pixel > 1 and geometry.planar_configuration == 1:
        array = array.transpose(2, 0, 1)
    return np.ascontiguousarray(array, dtype=_dtype(geometry)).tobytes()


_ENCODE: dict[str, Callable[[np.ndarray], bytes | bytearray]] = {  # JPEG-LS and JPEG XL: unsigned only
    "jpegls": lambda a: imagecodecs.jpegls_encode(a),
    "htj2k": lambda a: imagecodecs.htj2k_encode(a, reversible=True),
    "jpegxl": lambda a: imagecodecs.jpegxl_encode(a, lossless=True, effort=JPEGXL_EFFORT),
}
_DECODE: dict[str, Callable[[bytes], np.ndarray]] = {
    "jpegls": lambda b: imagecodecs.jpegls_decode(b),
    "htj2k": lambda b: imagecodecs.htj2k_decode(b),
    "jpegxl": lambda b: imagecodecs.jpegxl_decode(b),
}


def encode_frame(codec: str, raw: bytes | memoryview, geometry: Geometry) -> bytes:
    if codec == "zstd":
        return zstd_compress(raw, ZSTD_LEVEL_FRAME)
    # JPEG 2000 codestreams carry signedness: signed pixels go in signed, as DICOM expects, and compress
    # better when values cross zero (no jump from -1 to 65535: 2.7 times smaller on one NM file)
    signed = codec == "htj2k" and geometry.pixel_representation == 1
    return bytes(_ENCODE[codec](frame_array(raw, geometry, signed)))


def decode_frame_bytes(codec: str, codestream: bytes, geometry: Geometry) -> bytes:
    if codec == "zstd":
        return zstd_decompress(codestream, geometry.frame_size)
    return array_bytes(_DECODE[codec](codestream), geometry)


def fits_bits_stored(raw: bytes | memoryview, geometry: Geometry) -> bool:
    """Whether a decoder of the codestream sees what a decoder of the native frame sees.

    A codestream's precision is Bits Allocated and decoders take its values as they are (pydicom does
    not mask JPEG-LS output to Bits Stored), while for native data they mask to Bits Stored and
    sign-extend from High Bit. They agree when every sample already reads so: unsigned below
    2**BitsStored, signed sign-extended from its top stored bit. Junk above (old overlays) or signed
    values stored without their sign bits do not.
    """
    bits_stored, bits_allocated = geometry.bits_stored, geometry.bits_allocated
    if bits_stored >= bits_allocated:
        return True
    if geometry.high_bit != bits_stored - 1:
        return False
    samples = np.frombuffer(raw, dtype=_dtype(geometry))
    if geometry.pixel_representation == 0:
        return int(samples.max()) < 1 << bits_stored
    signed = samples.view(samples.dtype.str.replace("u", "i"))  # same width and byte order
    limit = 1 << (bits_stored - 1)
    return int(signed.min()) >= -limit and int(signed.max()) < limit


def served_transfer_syntax(codec: str, geometry: Geometry, first_codestream: bytes) -> str | None:
    """The transfer syntax the codestreams are valid in as they are, or None when they must be decoded
    (the caller also requires ``fits_bits_stored`` of every frame).

    JPEG-LS has no colour transform and decodes colour-by-pixel (a served data set says Planar
    Configuration 0, PS3.5 8.2.3). HTJ2K colour uses the reversible colour transform, which would make
    the served Photometric Interpretation YBR_RCT: grey only. JPEG XL: grey, bare codestreams only
    (libjxl wraps 16-bit data in a container box, whose place in DICOM is not settled here). Big endian
    8-bit samples in OW are byte-swapped in pairs, so their raw bytes are not the pixels: decode first.
    """
    if geometry.big_endian and geometry.bits_allocated == 8:
        return None
    if codec == "jpegls":
        return JPEG_LS_LOSSLESS
    if codec == "htj2k" and geometry.samples_per_pixel == 1:
        return HTJ2K_LOSSLESS
    if codec == "jpegxl" and geometry.samples_per_pixel == 1 and first_codestream[:2] == b"\xff\x0a":
        return JPEG_XL_LOSSLESS
    return None
