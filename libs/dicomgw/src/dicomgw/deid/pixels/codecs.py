"""Pixel data out of and back into its transfer syntax, for redaction.

Decoding gives every frame as sample values (pydicom's decoders, pylibjpeg and imagecodecs plugins).
Encoding writes the redacted frames back *in kind*:

- native stays native, in its transfer syntax (big endian becomes Explicit VR Little Endian); only the
  redacted samples are written, so every other byte stays what it was (colour by plane, YBR_FULL_422
  pairs and palette indices included);
- a lossless original is encoded losslessly again: RLE as RLE, JPEG-LS as JPEG-LS, JPEG lossless as
  JPEG lossless (SV1), JPEG 2000 and HTJ2K as JPEG 2000 lossless; signed samples go to JPEG 2000, and
  colour JPEG lossless to JPEG-LS, whose codestreams carry them without a colour transform;
- a lossy original is encoded lossily at its own quality: JPEG at the quality its quantisation tables
  show (and its chroma subsampling), JPEG-LS near-lossless at its NEAR, JPEG 2000 and HTJ2K as JPEG 2000
  at the PSNR that gives its compression ratio; Lossy Image Compression says 01 and the ratio and
  method of this compression are appended.

Frames that were not redacted keep their original codestream whenever the transfer syntax and
Photometric Interpretation stay, so they are not compressed a second time. What cannot be decoded or
encoded raises ``PixelDataError`` with the reason: the caller leaves the image out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import imagecodecs
import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels import get_decoder, get_encoder
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from dicomgw.deid.pixels.ocr import Box

NATIVE = frozenset({ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
                    ExplicitVRBigEndian})
LOSSLESS = frozenset({RLELossless, JPEGLossless, JPEGLosslessSV1, JPEGLSLossless, JPEG2000Lossless,
                      HTJ2KLossless, HTJ2KLosslessRPCL})
LOSSY = frozenset({JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLSNearLossless, JPEG2000, HTJ2K})
# PS3.3 C.7.6.1.1.5.1, Lossy Image Compression Method
METHOD = {JPEGBaseline8Bit: "ISO_10918_1", JPEGExtended12Bit: "ISO_10918_1",
          JPEGLSNearLossless: "ISO_14495_1", JPEG2000: "ISO_15444_1"}
JPEG2000_PSNR = (30, 90)  # dB searched for a lossy JPEG 2000 frame of the original's size


class PixelDataError(ValueError):
    """Why an image's pixels cannot be cleaned (it is left out with this reason)."""


@dataclass
class Decoded:
    """Every frame, frames x rows x columns [x samples]: native data as stored (YBR stays YBR, upsampled;
    palette stays indices), encapsulated data as its decoder gives it (colour as RGB)."""
    values: np.ndarray
    photometric: str
    transfer_syntax: UID
    kind: str  # native | lossless | lossy
    column_step: int = 1  # 2 for native YBR_FULL_422: boxes are widened to whole pairs
    ratio: float | None = None  # an encapsulated original's compression ratio
    codestreams: list[bytes] = field(default_factory=list)

    @property
    def indices(self) -> bool:
        return self.photometric == "PALETTE COLOR"


def transfer_syntax(ds: Dataset) -> UID:
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        raise PixelDataError("no transfer syntax in the file meta information")
    return UID(str(meta.TransferSyntaxUID))


def _kind(uid: UID) -> str:
    if uid in NATIVE:
        return "native"
    if uid in LOSSLESS:
        return "lossless"
    if uid in LOSSY:
        return "lossy"
    raise PixelDataError(f"pixel data in {uid.name} ({uid}) cannot be redacted and encoded again here")


def frame_count(ds: Dataset) -> int:
    return int(ds.get("NumberOfFrames", 1) or 1)


def decode(ds: Dataset) -> Decoded:
    if "PixelData" not in ds:
        raise PixelDataError("no integer Pixel Data (float pixel data is not cleaned)")
    if int(ds.get("BitsAllocated", 0)) not in (8, 16, 32):
        raise PixelDataError(f"{ds.get('BitsAllocated')}-bit pixel data is not cleaned")
    uid = transfer_syntax(ds)
    kind = _kind(uid)
    photometric = str(ds.get("PhotometricInterpretation", ""))
    try:
        decoder = get_decoder(uid)
        arrays = []
        for array, meta in decoder.iter_array(ds, raw=kind == "native"):
            arrays.append(array)
            photometric = str(meta.get("photometric_interpretation", photometric))
    except Exception as exc:  # any decoder failure: the image is left out, never passed on
        raise PixelDataError(f"pixel data could not be decoded: {type(exc).__name__}: {exc}") from exc
    values = np.stack(arrays)
    expected = frame_count(ds)
    if values.shape[0] != expected:
        raise PixelDataError(f"decoded {values.shape[0]} frames, Number of Frames says {expected}")
    step = 2 if kind == "native" and str(ds.PhotometricInterpretation) == "YBR_FULL_422" else 1
    codestreams, ratio = [], None
    if kind != "native":
        codestreams = list(generate_frames(ds.PixelData, number_of_frames=expected))
        ratio = values.size * int(ds.BitsAllocated) / 8 / max(1, sum(len(c) for c in codestreams))
    return Decoded(values, photometric, uid, kind, step, ratio, codestreams)


# ---- native ------------------------------------------------------------------------------------

def _native_dtype(ds: Dataset) -> np.dtype[np.integer]:
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    return np.dtype(f"<{'i' if signed else 'u'}{int(ds.BitsAllocated) // 8}")


def _stored(ds: Dataset, frames: int) -> tuple[np.ndarray, np.ndarray, bytes]:
    """A writable copy of the stored samples and a frames x rows x columns x samples view of it (the
    storage layout kept: colour by plane stays by plane), and the bytes after the last frame."""
    rows, columns, samples = int(ds.Rows), int(ds.Columns), int(ds.get("SamplesPerPixel", 1))
    dtype = _native_dtype(ds)
    count = frames * rows * columns * samples
    data = bytes(ds.PixelData)
    if len(data) < count * dtype.itemsize:
        raise PixelDataError(f"Pixel Data holds {len(data)} bytes, {count * dtype.itemsize} expected")
    stored = np.frombuffer(data, dtype=dtype, count=count).copy()
    if samples > 1 and int(ds.get("PlanarConfiguration", 0)) == 1:
        view = stored.reshape(frames, samples, rows, columns).transpose(0, 2, 3, 1)
    else:
        view = stored.reshape(frames, rows, columns, samples)
    return stored, view, data[count * dtype.itemsize:]


def encode_native(ds: Dataset, decoded: Decoded, values: np.ndarray,
                  fills: Sequence[tuple[int, Box, np.ndarray]]) -> None:
    """Write the redacted samples into ``ds`` (its Pixel Data replaced, every other byte kept)."""
    frames = values.shape[0]
    if decoded.transfer_syntax == ExplicitVRBigEndian:
        # the decoded values are exact; written little endian (YBR_FULL_422 upsampled to YBR_FULL)
        ds.PixelData = np.ascontiguousarray(values.astype(_native_dtype(ds))).tobytes()
        if decoded.photometric != str(ds.PhotometricInterpretation):
            ds.PhotometricInterpretation = decoded.photometric
        if int(ds.get("SamplesPerPixel", 1)) > 1:
            ds.PlanarConfiguration = 0
        ds["PixelData"].VR = "OW" if int(ds.BitsAllocated) > 8 else "OB"
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        return
    if decoded.column_step == 2:  # YBR_FULL_422: Y0 Y1 Cb Cr per pair of pixels
        pairs = np.frombuffer(bytes(ds.PixelData), dtype=np.uint8,
                              count=frames * int(ds.Rows) * int(ds.Columns) * 2).copy()
        quads = pairs.reshape(frames, int(ds.Rows), int(ds.Columns) // 2, 4)
        for frame, (row0, col0, row1, col1), fill in fills:
            y, cb, cr = (int(v) for v in fill)
            quads[frame, row0:row1, col0 // 2:(col1 + 1) // 2] = (y, y, cb, cr)
        tail = bytes(ds.PixelData)[pairs.size:]
        ds.PixelData = pairs.tobytes() + tail
        return
    stored, view, tail = _stored(ds, frames)
    for frame, (row0, col0, row1, col1), fill in fills:
        view[frame, row0:row1, col0:col1] = fill.astype(stored.dtype)
    ds.PixelData = stored.tobytes() + tail


# ---- encapsulated --------------------------------------------------------------------------------

_ZIGZAG = np.array([
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6,
    7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59, 52, 45, 38, 31,
    39, 46, 53, 60, 61, 54, 47, 55, 62, 63])
# ITU-T T.81 Annex K.1, luminance, in natural order: what IJG's quality scales
_LUMINANCE = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], dtype=np.float64)


def _segments(codestream: bytes) -> list[tuple[int, bytes]]:
    """JPEG / JPEG-LS marker segments up to the first scan's header: (marker, payload)."""
    out, at = [], 2
    while at + 4 <= len(codestream) and codestream[at] == 0xFF:
        marker = codestream[at + 1]
        length = int.from_bytes(codestream[at + 2:at + 4], "big")
        out.append((marker, codestream[at + 4:at + 2 + length]))
        if marker == 0xDA:
            break
        at += 2 + length
    return out


def jpeg_quality(codestream: bytes) -> int:
    """The IJG quality (1-100) whose scaling of T.81's luminance table best matches table 0."""
    for marker, payload in _segments(codestream):
        at = 0
        while marker == 0xDB and at < len(payload):
            precision, table = payload[at] >> 4, payload[at] & 15
            width = 2 if precision else 1
            raw = payload[at + 1:at + 1 + 64 * width]
            at += 1 + 64 * width
            if table != 0:
                continue
            zigzag = np.frombuffer(raw, dtype=">u2" if width == 2 else np.uint8).astype(np.float64)
            natural = np.empty(64)
            natural[_ZIGZAG] = zigzag
            scale = float(np.mean(natural * 100.0 / _LUMINANCE))
            quality = (200.0 - scale) / 2.0 if scale <= 100.0 else 5000.0 / scale
            return int(min(100, max(1, round(quality))))
    raise PixelDataError("JPEG codestream without a luminance quantisation table")


def jpeg_subsampling(codestream: bytes) -> tuple[int, int]:
    for marker, payload in _segments(codestream):
        if marker in (0xC0, 0xC1) and len(payload) >= 9:
            sampling = payload[7]
            return sampling >> 4, sampling & 15
    raise PixelDataError("JPEG codestream without a frame header")


def jpegls_near(codestream: bytes) -> int:
    for marker, payload in _segments(codestream):
        if marker == 0xDA:
            components = payload[0]
            return int(payload[1 + 2 * components])
    raise PixelDataError("JPEG-LS codestream without a scan header")


@dataclass(frozen=True)
class Plan:
    """How redacted frames are encoded: the target syntax, its frame encoder, the Photometric
    Interpretation the codestreams then have, and the lossy method (None: lossless)."""
    transfer_syntax: UID
    encode: Callable[[np.ndarray], bytes]
    photometric: str
    method: str | None = None


def _grey_photometric(decoded: Decoded) -> str:
    return decoded.photometric if decoded.photometric in ("MONOCHROME1", "MONOCHROME2") else "MONOCHROME2"


def _j2k(ds: Dataset, decoded: Decoded, *, reversible: bool, psnr: int | None = None) -> Plan:
    colour = decoded.values.ndim == 4 and decoded.photometric != "PALETTE COLOR"
    bits = int(ds.get("BitsStored", ds.BitsAllocated))

    def encode(frame: np.ndarray) -> bytes:
        return bytes(imagecodecs.jpeg2k_encode(frame, level=None if reversible else psnr, codecformat="J2K",
                                               reversible=reversible, mct=colour, bitspersample=bits))

    photometric = ("YBR_RCT" if reversible else "YBR_ICT") if colour else (
        decoded.photometric if decoded.indices else _grey_photometric(decoded))
    return Plan(JPEG2000Lossless if reversible else JPEG2000, encode, photometric,
                None if reversible else METHOD[JPEG2000])


def _rle(ds: Dataset, decoded: Decoded) -> Plan:
    encoder = get_encoder(RLELossless)
    photometric = decoded.photometric
    options = {"rows": int(ds.Rows), "columns": int(ds.Columns),
               "samples_per_pixel": int(ds.get("SamplesPerPixel", 1)), "number_of_frames": 1,
               "bits_allocated": int(ds.BitsAllocated), "bits_stored": int(ds.BitsStored),
               "pixel_representation": int(ds.get("PixelRepresentation", 0)),
               "photometric_interpretation": photometric, "planar_configuration": 0}

    def encode(frame: np.ndarray) -> bytes:
        return bytes(encoder.encode(np.ascontiguousarray(frame), **options))  # type: ignore[arg-type]

    return Plan(RLELossless, encode, photometric)


def _jpegls(decoded: Decoded, near: int = 0) -> Plan:
    def encode(frame: np.ndarray) -> bytes:
        return bytes(imagecodecs.jpegls_encode(np.ascontiguousarray(frame), level=near or None))

    colour = decoded.values.ndim == 4 or decoded.indices
    photometric = decoded.photometric if colour else _grey_photometric(decoded)
    return Plan(JPEGLSNearLossless if near else JPEGLSLossless, encode, photometric,
                METHOD[JPEGLSNearLossless] if near else None)


def _jpeg_lossless(ds: Dataset, decoded: Decoded) -> Plan:
    bits = int(ds.BitsStored)

    def encode(frame: np.ndarray) -> bytes:
        return bytes(imagecodecs.jpeg8_encode(np.ascontiguousarray(frame), lossless=True, predictor=1,
                                              bitspersample=bits))

    photometric = decoded.photometric if decoded.indices else _grey_photometric(decoded)
    return Plan(JPEGLosslessSV1, encode, photometric)


def _jpeg_lossy(ds: Dataset, decoded: Decoded) -> Plan:
    first = decoded.codestreams[0]
    quality = jpeg_quality(first)
    colour = decoded.values.ndim == 4 and not decoded.indices
    bits = 12 if decoded.transfer_syntax == JPEGExtended12Bit and int(ds.BitsStored) > 8 else 8
    subsampling = jpeg_subsampling(first) if colour else (1, 1)

    def encode(frame: np.ndarray) -> bytes:
        frame = np.ascontiguousarray(frame)
        if colour:
            return bytes(imagecodecs.jpeg8_encode(frame, level=quality, colorspace="RGB",
                                                  outcolorspace="YCBCR", subsampling=subsampling))
        return bytes(imagecodecs.jpeg8_encode(frame, level=quality, bitspersample=bits))

    if colour:
        photometric = "YBR_FULL" if subsampling == (1, 1) else "YBR_FULL_422"
    else:
        photometric = _grey_photometric(decoded)
    return Plan(decoded.transfer_syntax, encode, photometric, METHOD[JPEGBaseline8Bit])


def _j2k_at_ratio(ds: Dataset, decoded: Decoded, sample: np.ndarray, size: int) -> Plan:
    """Lossy JPEG 2000 at the PSNR whose codestream of ``sample`` is nearest ``size`` bytes."""
    low, high = JPEG2000_PSNR
    while high - low > 1:
        middle = (low + high) // 2
        if len(_j2k(ds, decoded, reversible=False, psnr=middle).encode(sample)) > size:
            high = middle
        else:
            low = middle
    return _j2k(ds, decoded, reversible=False, psnr=high)


def plan(ds: Dataset, decoded: Decoded, changed: Sequence[int]) -> Plan:
    uid = decoded.transfer_syntax
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    colour = decoded.values.ndim == 4 and not decoded.indices
    if uid == RLELossless:
        return _rle(ds, decoded)
    if uid == JPEGLSLossless:
        return _j2k(ds, decoded, reversible=True) if signed else _jpegls(decoded)
    if uid in (JPEGLossless, JPEGLosslessSV1):
        if signed:
            return _j2k(ds, decoded, reversible=True)
        return _jpegls(decoded) if colour else _jpeg_lossless(ds, decoded)
    if uid in (JPEG2000Lossless, HTJ2KLossless, HTJ2KLosslessRPCL):
        return _j2k(ds, decoded, reversible=True)
    if uid in (JPEGBaseline8Bit, JPEGExtended12Bit) and not signed:
        return _jpeg_lossy(ds, decoded)
    if uid == JPEGLSNearLossless and not signed:
        return _jpegls(decoded, jpegls_near(decoded.codestreams[0]))
    if uid in LOSSY:
        index = changed[0] if changed else 0
        return _j2k_at_ratio(ds, decoded, decoded.values[index], len(decoded.codestreams[index]))
    raise PixelDataError(f"no encoder for {uid.name}")


def encode_encapsulated(ds: Dataset, decoded: Decoded, values: np.ndarray, changed: Sequence[int]) -> None:
    """Encode ``values`` into ``ds`` in kind; frames not in ``changed`` keep their codestreams when the
    transfer syntax and Photometric Interpretation stay."""
    chosen = plan(ds, decoded, changed)
    keep = chosen.transfer_syntax == decoded.transfer_syntax and chosen.photometric == str(
        ds.PhotometricInterpretation)
    codestreams = []
    try:
        for index in range(values.shape[0]):
            if keep and index not in changed:
                codestreams.append(decoded.codestreams[index])
            else:
                codestreams.append(chosen.encode(values[index]))
    except Exception as exc:
        raise PixelDataError(f"redacted pixels could not be encoded as {chosen.transfer_syntax.name}: "
                             f"{type(exc).__name__}: {exc}") from exc
    ds.PixelData = encapsulate(codestreams, has_bot=True)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.PhotometricInterpretation = chosen.photometric
    if int(ds.get("SamplesPerPixel", 1)) > 1:
        ds.PlanarConfiguration = 0
    ds.file_meta.TransferSyntaxUID = chosen.transfer_syntax
    if chosen.method is not None:
        ratios = [str(v) for v in _values(ds.get("LossyImageCompressionRatio"))]
        methods = [str(v) for v in _values(ds.get("LossyImageCompressionMethod"))]
        original = METHOD.get(decoded.transfer_syntax, "ISO_15444_1")
        if not ratios and decoded.kind == "lossy" and decoded.ratio:
            # the original's own lossy compression, which it did not record
            ratios, methods = [f"{decoded.ratio:.2f}"], [original]
        # one method per ratio (PS3.3 C.7.6.1.1.5.1): a recorded ratio without its method gets the one
        # its transfer syntax names
        methods = [*methods, *[original] * (len(ratios) - len(methods))][:len(ratios)]
        ratio = values.size * int(ds.BitsAllocated) / 8 / sum(len(c) for c in codestreams)
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionRatio = [*ratios, f"{ratio:.2f}"]
        ds.LossyImageCompressionMethod = [*methods, chosen.method]


def _values(value: object) -> list[object]:
    if value is None or value == "":
        return []
    if isinstance(value, str | bytes | int | float):
        return [value]
    return list(value)  # type: ignore[call-overload]
