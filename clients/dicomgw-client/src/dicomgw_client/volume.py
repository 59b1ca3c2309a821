"""Geometry and pixels of DICOM images: frames, stacks in patient order, RAS affines, real-world values.

Pure functions over pydicom datasets (read from a file, or from the DICOM JSON of WADO-RS metadata): no
network, no cache. A *frame* is one 2D image (a single-frame instance, or one frame of a multi-frame
one); a *stack* is the frames of a series that make one regular volume.

Layout of a volume, the one dcm2niix writes and nibabel reads back: ``image[i, j, k]`` with ``i`` along
the columns of the DICOM image, ``j`` along its rows from the last row to the first, ``k`` along the
slice normal (row direction x column direction) in increasing order; ``affine @ (i, j, k, 1)`` is the
voxel's centre in RAS millimetres (DICOM's LPS with x and y negated).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_modality_lut
from pydicom.pixels.utils import pixel_array

from dicomgw_client import rawread
from dicomgw_client.errors import GeometryError

Float32Array = npt.NDArray[np.float32]
Float64Array = npt.NDArray[np.float64]

# slices closer than this along the normal are at one position (mm)
SAME_POSITION_MM = 1e-3
# a stack is regular when every step between neighbouring slices is within this fraction of the mean
# step (and SAME_POSITION_MM) of it: a missing slice doubles a step, a gap of 1 % is caught
STEP_TOLERANCE = 0.01
# orientations whose direction cosines differ by less than this are one orientation
ORIENTATION_TOLERANCE = 1e-4
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# uncompressed little-endian transfer syntaxes (Implicit and Explicit VR), read straight by Pixels
_NATIVE_LE = frozenset({rawread.IMPLICIT_VR_LE, rawread.EXPLICIT_VR_LE})


@dataclass(frozen=True)
class Frame:
    """One 2D image and where it is: the geometry DICOM gives it, per frame for enhanced objects."""

    sop_instance_uid: str
    index: int  # 0-based frame of the instance
    rows: int
    columns: int
    samples: int
    position: tuple[float, float, float] | None  # ImagePositionPatient of the first pixel (LPS mm)
    orientation: tuple[float, float, float, float, float, float] | None  # row, then column cosines
    pixel_spacing: tuple[float, float] | None  # between rows, between columns (mm)
    slice_thickness: float | None
    spacing_between_slices: float | None
    frame_of_reference_uid: str
    # what else tells frames at one place apart: enhanced StackID, echo, temporal position
    acquisition: tuple[str, ...]

    @property
    def key(self) -> tuple[str, int]:
        return (self.sop_instance_uid, self.index)


@dataclass(frozen=True)
class Stack:
    """Frames that make one regular volume, in slice order, and its affine."""

    frames: tuple[Frame, ...]
    affine: Float64Array

    @property
    def shape(self) -> tuple[int, int, int]:
        first = self.frames[0]
        return (first.columns, first.rows, len(self.frames))


@dataclass(frozen=True)
class Irregular:
    """Frames that belong together but are not a regular volume, and why (they are never resampled)."""

    frames: tuple[Frame, ...]
    reason: str


# ---- frames ----------------------------------------------------------------------------------------
def _floats(value: Any, n: int) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        values = tuple(float(v) for v in (value if isinstance(value, Iterable) else [value]))
    except (TypeError, ValueError):
        return None
    return values if len(values) == n and all(np.isfinite(values)) else None


def _text(value: Any) -> str:
    """A value as text, the same whoever parsed it (pydicom, rawread, DICOM JSON): several values
    joined by backslashes, numbers as Python writes them."""
    if value is None or value == "":
        return ""
    if isinstance(value, (list, tuple)) or (isinstance(value, Iterable) and not isinstance(value, str)):
        return "\\".join(_text(v) for v in value)
    return str(int(value)) if isinstance(value, int) else str(value)


def _float(value: Any) -> float | None:
    got = _floats(value, 1)
    return got[0] if got else None


def _group_value(groups: Sequence[Dataset | None], sequence: str, keyword: str) -> Any:
    """``keyword`` of the first item of ``sequence`` in the first functional group that has it."""
    for group in groups:
        if group is None or sequence not in group:
            continue
        items = group[sequence].value
        if items and keyword in items[0]:
            return items[0][keyword].value
    return None


class Attributes(Protocol):
    """What ``frames_of`` reads of an instance: attributes by keyword (a pydicom Dataset, or a lighter
    view of its DICOM JSON)."""

    def get(self, key: str, default: Any = None) -> Any: ...


def _functional_groups(ds: Attributes, index: int) -> list[Dataset | None]:
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    shared = ds.get("SharedFunctionalGroupsSequence")
    return [per_frame[index] if per_frame is not None and index < len(per_frame) else None,
            shared[0] if shared else None]


def frames_of(ds: Attributes) -> list[Frame]:
    """The frames of an instance with their geometry: per-frame functional groups first, then shared
    ones, then the top-level attributes. A multi-frame object without per-frame positions gets none (its
    frames cannot be placed), a single frame the instance's own."""
    count = int(ds.get("NumberOfFrames") or 1)
    out = []
    for index in range(count):
        groups = _functional_groups(ds, index)
        position = _group_value(groups, "PlanePositionSequence", "ImagePositionPatient")
        if position is None and count == 1:
            position = ds.get("ImagePositionPatient")
        orientation = (_group_value(groups, "PlaneOrientationSequence", "ImageOrientationPatient")
                       or ds.get("ImageOrientationPatient"))
        spacing = _group_value(groups, "PixelMeasuresSequence", "PixelSpacing") or ds.get("PixelSpacing")
        thickness = _group_value(groups, "PixelMeasuresSequence", "SliceThickness")
        between = _group_value(groups, "PixelMeasuresSequence", "SpacingBetweenSlices")
        acquisition = (
            _text(_group_value(groups, "FrameContentSequence", "StackID")),
            _text(ds.get("EchoNumbers")),
            _text(_group_value(groups, "FrameContentSequence", "TemporalPositionIndex")
                  or ds.get("TemporalPositionIndex")),
        )
        out.append(Frame(
            sop_instance_uid=str(ds.get("SOPInstanceUID", "")), index=index,
            rows=int(ds.get("Rows") or 0), columns=int(ds.get("Columns") or 0),
            samples=int(ds.get("SamplesPerPixel") or 1),
            position=_floats(position, 3),  # type: ignore[arg-type]
            orientation=_floats(orientation, 6),  # type: ignore[arg-type]
            pixel_spacing=_floats(spacing, 2),  # type: ignore[arg-type]
            slice_thickness=_float(thickness if thickness is not None else ds.get("SliceThickness")),
            spacing_between_slices=_float(between if between is not None
                                          else ds.get("SpacingBetweenSlices")),
            frame_of_reference_uid=str(ds.get("FrameOfReferenceUID", "") or ""),
            acquisition=acquisition,
        ))
    return out


# ---- stacks ----------------------------------------------------------------------------------------
def _cosines(frame: Frame) -> tuple[Float64Array, Float64Array, Float64Array]:
    assert frame.orientation is not None
    o = np.asarray(frame.orientation, dtype=np.float64)
    row, column = o[:3] / np.linalg.norm(o[:3]), o[3:] / np.linalg.norm(o[3:])
    normal = np.cross(row, column)
    return row, column, normal / np.linalg.norm(normal)


# Per-frame tests on 3-vectors are written in plain Python: NumPy's cost per call on arrays this small
# was most of planning a series of a few hundred slices.
def _norm(v: Sequence[float]) -> float:
    return math.sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2])


def _cross(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float]:
    return (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])


def _close(a: Sequence[float], b: Sequence[float], tolerance: float) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= tolerance for x, y in zip(a, b, strict=True))


def _placeable(frame: Frame) -> bool:
    if frame.position is None or frame.orientation is None or frame.pixel_spacing is None:
        return False
    o = frame.orientation
    return _norm(o[:3]) > 0.5 and _norm(o[3:]) > 0.5 and _norm(_cross(o[:3], o[3:])) > 0.5


def _same_group(a: Frame, b: Frame) -> bool:
    assert a.orientation is not None and b.orientation is not None
    return ((a.frame_of_reference_uid, a.rows, a.columns, a.samples, a.acquisition)
            == (b.frame_of_reference_uid, b.rows, b.columns, b.samples, b.acquisition)
            and _close(a.orientation, b.orientation, ORIENTATION_TOLERANCE)
            and _close(a.pixel_spacing or (), b.pixel_spacing or (), 1e-4))


def affine(frames: Sequence[Frame]) -> Float64Array:
    """The RAS affine of frames in slice order (regular: their steps are equal), in the module's layout."""
    first = frames[0]
    assert first.position is not None and first.pixel_spacing is not None
    row, column, normal = _cosines(first)
    between_rows, between_columns = first.pixel_spacing
    origin = np.asarray(first.position, dtype=np.float64)
    if len(frames) > 1:
        last = frames[-1].position
        assert last is not None
        step = (np.asarray(last, dtype=np.float64) - origin) / (len(frames) - 1)
    else:
        # one slice: its extent along the normal, as dcm2niix takes it
        step = normal * (first.spacing_between_slices or first.slice_thickness or 1.0)
    lps = np.eye(4)
    lps[:3, 0] = row * between_columns
    lps[:3, 1] = -column * between_rows  # j runs from the last row up
    lps[:3, 2] = step
    lps[:3, 3] = origin + column * between_rows * (first.rows - 1)
    return LPS_TO_RAS @ lps


def frame_affine(frame: Frame) -> Float64Array:
    """The RAS affine of one frame in display layout, ``image[row, column]``: NaN where unknown."""
    if not _placeable(frame):
        return np.full((4, 4), np.nan)
    assert frame.position is not None and frame.pixel_spacing is not None
    row, column, normal = _cosines(frame)
    between_rows, between_columns = frame.pixel_spacing
    lps = np.eye(4)
    lps[:3, 0] = column * between_rows
    lps[:3, 1] = row * between_columns
    lps[:3, 2] = normal * (frame.slice_thickness or frame.spacing_between_slices or 1.0)
    lps[:3, 3] = frame.position
    return LPS_TO_RAS @ lps


def _check(frames: list[Frame]) -> str | None:
    """Why frames of one orientation and size, sorted along the normal, are not a regular volume."""
    if len(frames) < 2:
        return None
    _, _, normal = _cosines(frames[0])
    positions = np.array([f.position for f in frames], dtype=np.float64)
    steps = np.diff(positions, axis=0)
    along = steps @ normal
    if np.any(along < SAME_POSITION_MM):
        return f"{int(np.sum(along < SAME_POSITION_MM)) + 1} frames at one position (several acquisitions?)"
    mean = (positions[-1] - positions[0]) / (len(frames) - 1)
    deviation = np.linalg.norm(steps - mean, axis=1)
    if np.any(deviation > STEP_TOLERANCE * np.linalg.norm(mean) + SAME_POSITION_MM):
        return (f"unequal slice spacing: steps from {along.min():.4g} to {along.max():.4g} mm "
                "(a gap or missing slices)")
    if float(mean @ normal) < np.linalg.norm(mean) * np.cos(np.radians(45)):
        return "slices shifted in their plane by more than they are apart"
    return None


def _along(normal: Float64Array) -> Callable[[Frame], tuple[float, tuple[str, int]]]:
    """The sort key of placeable frames: their position along ``normal``, then which frame they are."""
    nx, ny, nz = (float(v) for v in normal)

    def key(frame: Frame) -> tuple[float, tuple[str, int]]:
        assert frame.position is not None
        x, y, z = frame.position
        return x * nx + y * ny + z * nz, frame.key

    return key


def plan(frames: Iterable[Frame]) -> tuple[list[Stack], list[Irregular]]:
    """Frames of one series split into regular stacks (by frame of reference, orientation, size,
    spacing, stack, echo and temporal position, each sorted along its normal), and what is irregular."""
    groups: list[list[Frame]] = []
    unplaceable: list[Frame] = []
    for frame in frames:
        if not _placeable(frame):
            unplaceable.append(frame)
            continue
        for group in groups:
            if _same_group(group[0], frame):
                group.append(frame)
                break
        else:
            groups.append([frame])
    stacks, irregular = [], []
    for group in groups:
        ordered = sorted(group, key=_along(_cosines(group[0])[2]))
        reason = _check(ordered)
        if reason is None:
            stacks.append(Stack(tuple(ordered), affine(ordered)))
        else:
            irregular.append(Irregular(tuple(ordered), reason))
    if unplaceable:
        irregular.append(Irregular(tuple(unplaceable), "no position, orientation or pixel spacing "
                                                       "(e.g. a multi-frame object without per-frame "
                                                       "geometry)"))
    return stacks, irregular


# ---- pixels ----------------------------------------------------------------------------------------
def read(data: bytes) -> tuple[Dataset | rawread.Attributes, Pixels | None]:
    """A DICOM object's bytes parsed for its frames: ``(attributes, pixels)``. For an uncompressed
    little-endian grey image, ``pixels`` reads its frames straight from a view of ``data`` (no copy: 0.5
    MB a CT slice), and the attributes are what ``rawread`` reads of the object (a tenth of pydicom's
    cost), or, where it declines, a dataset pydicom parsed up to the Pixel Data; ``real_world`` and
    ``Assembly`` take both. Anything else is parsed whole by pydicom, and ``pixels`` is None."""
    fast = rawread.read(data)
    if fast is not None:
        attributes, view = fast
        pixels = Pixels.of(attributes, view, attributes.transfer_syntax)
        if pixels is not None and pixels.rescale is not None:
            return attributes, pixels
        # its attributes are pydicom's (rawread declines what it does not read so): not a view either
        return dcmread(io.BytesIO(data)), None
    fp = io.BytesIO(data)
    ds = dcmread(fp, stop_before_pixels=True)
    meta = getattr(ds, "file_meta", None)
    located = rawread.pixel_data_at(data, fp.tell(), str(meta.get("TransferSyntaxUID", "")) if meta else "")
    pixels = Pixels.of(ds, located) if located is not None else None
    if pixels is None:
        return dcmread(io.BytesIO(data)), None
    return ds, pixels


@dataclass(frozen=True)
class Pixels:
    """The frames of an uncompressed little-endian grey image, read straight from its Pixel Data: the
    values pydicom's ``pixel_array`` gives (unused high bits cleared, or the sign extended from Bits
    Stored, as pydicom does by default), without its per-call set-up, which costs more than the frame's
    bytes for a CT slice (0.6 ms); and the attributes that takes read once per object, not per frame."""

    data: bytes | memoryview
    dtype: np.dtype[Any]
    rows: int
    columns: int
    stored: int
    frames: int
    # the instance's (slope, intercept) when no per-frame transformation nor Modality LUT can apply;
    # None: real_world looks the rescale up per frame
    rescale: tuple[float, float] | None

    @classmethod
    def of(cls, ds: Dataset | rawread.Attributes, data: bytes | memoryview,
           syntax: str | None = None) -> Pixels | None:
        """``ds``'s frames in ``data`` (its Pixel Data's value), in transfer ``syntax`` (else its file
        meta's); None for anything else (compressed, colour, big endian, 1-bit or float pixels, short
        data): then pydicom decodes it."""
        if syntax is None:
            meta = getattr(ds, "file_meta", None)
            syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
        bits = ds.get("BitsAllocated")
        if (syntax not in _NATIVE_LE or bits not in (8, 16, 32) or int(ds.get("SamplesPerPixel") or 1) != 1
                or str(ds.get("PhotometricInterpretation", "")) not in ("MONOCHROME1", "MONOCHROME2")):
            return None
        rows, columns = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
        stored = int(ds.get("BitsStored") or bits)
        frames = int(ds.get("NumberOfFrames") or 1)
        if (not rows * columns or not 0 < stored <= bits or frames < 1
                or len(data) < frames * rows * columns * bits // 8):
            return None
        signed = int(ds.get("PixelRepresentation") or 0) == 1
        rescale = None
        if not any(k in ds for k in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence",
                                     "ModalityLUTSequence")):
            slope, intercept = _float(ds.get("RescaleSlope")), _float(ds.get("RescaleIntercept"))
            rescale = (1.0 if slope is None else slope, intercept or 0.0)
        return cls(data, np.dtype(f"<{'i' if signed else 'u'}{bits // 8}"), rows, columns, stored, frames,
                   rescale)

    def frame(self, index: int) -> npt.NDArray[Any]:
        if not 0 <= index < self.frames:
            raise IndexError(f"frame {index} of {self.frames}")
        count = self.rows * self.columns
        frame = np.frombuffer(self.data, dtype=self.dtype, count=count,
                              offset=index * count * self.dtype.itemsize).reshape(self.rows, self.columns)
        bits = self.dtype.itemsize * 8
        if self.stored < bits:
            shift = bits - self.stored
            frame = np.right_shift(np.left_shift(frame, shift), shift)
        return frame


def real_world(ds: Dataset | rawread.Attributes, index: int, out: Float32Array | None = None,
               pixels: Pixels | None = None) -> Float32Array:
    """Frame ``index`` of ``ds`` in display layout (rows, columns[, samples]), as real-world values:
    the rescale of the frame's Pixel Value Transformation (or the instance's Rescale Slope/Intercept,
    or its Modality LUT) applied to grey images; colour images as they decode. Written into ``out``
    (an array or a view of that shape) when given, which is returned. ``pixels``: what ``read`` gave
    for a dataset parsed up to its Pixel Data."""
    if pixels is not None and pixels.rescale is not None:
        raw = pixels.frame(index)
        if out is None:
            out = np.empty(raw.shape, dtype=np.float32)
        _rescale(raw, *pixels.rescale, out)
        return out
    assert isinstance(ds, Dataset), "the attributes rawread gives come with their pixels and rescale"
    if pixels is None and "PixelData" in ds:
        pixels = Pixels.of(ds, ds.PixelData)
    raw = pixels.frame(index) if pixels is not None else pixel_array(ds, index=index)
    if out is None:
        out = np.empty(raw.shape, dtype=np.float32)
    if pixels is not None and pixels.rescale is not None:
        _rescale(raw, *pixels.rescale, out)
        return out
    samples = int(ds.get("SamplesPerPixel") or 1)
    if samples != 1:
        out[...] = raw
        return out
    groups = _functional_groups(ds, index)
    slope = _float(_group_value(groups, "PixelValueTransformationSequence", "RescaleSlope"))
    intercept = _float(_group_value(groups, "PixelValueTransformationSequence", "RescaleIntercept"))
    if slope is None and intercept is None:
        if "ModalityLUTSequence" in ds:
            out[...] = apply_modality_lut(raw, ds)
            return out
        slope, intercept = _float(ds.get("RescaleSlope")), _float(ds.get("RescaleIntercept"))
    _rescale(raw, 1.0 if slope is None else slope, intercept or 0.0, out)
    return out


def _native_frame(ds: Dataset, index: int) -> npt.NDArray[Any] | None:
    """Frame ``index`` of ``ds`` read straight from its Pixel Data (``Pixels``); None when it is not
    such an image, or has no such frame."""
    pixels = Pixels.of(ds, ds.PixelData) if "PixelData" in ds else None
    if pixels is None or not 0 <= index < pixels.frames:
        return None
    return pixels.frame(index)


# integers up to this magnitude are exact in float32
_FLOAT32_EXACT = 2 ** 24


def _rescale(raw: npt.NDArray[Any], slope: float, intercept: float, out: Float32Array) -> None:
    """``out = float32(raw * slope + intercept)`` as computed in float64. Integer pixels of at most 16
    bits with an integer slope and intercept give integers that float32 holds exactly: then the
    arithmetic is done in float32 in place (the same values, without a float64 copy of the frame)."""
    if (raw.dtype.kind in "ui" and raw.dtype.itemsize <= 2 and slope.is_integer() and intercept.is_integer()
            and abs(slope) * 2 ** 16 + abs(intercept) < _FLOAT32_EXACT):
        out[...] = raw
        if slope != 1.0:
            out *= np.float32(slope)
        if intercept:
            out += np.float32(intercept)
        return
    values = raw.astype(np.float64)
    values *= slope
    values += intercept
    out[...] = values


class Assembly:
    """A stack's voxels filled in as its objects come (``add``), in ``assemble``'s layout: each frame is
    written once, in its place, so that a volume is made while its last objects are still arriving."""

    def __init__(self, keys: Sequence[tuple[str, int]]) -> None:
        self._place = {key: k for k, key in enumerate(keys)}
        self._filled: set[int] = set()
        self._out: Float32Array | None = None

    def add(self, ds: Dataset | rawread.Attributes, frames: Sequence[Frame], pixels: Pixels | None = None,
            ) -> None:
        """The object's frames (``frames_of(ds)``) that are the stack's, in their places. GeometryError
        when one's size is not the stack's (of the first frame placed)."""
        for frame in frames:
            k = self._place.get(frame.key)
            if k is None:
                continue
            plane = (frame.rows, frame.columns) + ((frame.samples,) if frame.samples != 1 else ())
            if self._out is None:
                self._out = np.empty((len(self._place), *plane), dtype=np.float32)
            elif self._out.shape[1:] != plane:
                raise GeometryError(f"frame {frame.key} is {plane}, not the stack's {self._out.shape[1:]}")
            # display (row, column) -> (last row first, column), in slice k's place
            real_world(ds, frame.index, self._out[k, ::-1], pixels)
            self._filled.add(k)

    def result(self) -> Float32Array:
        """The volume, (columns, rows, slices[, samples]); GeometryError when a frame was not added."""
        if self._out is None or len(self._filled) != len(self._place):
            raise GeometryError(f"{len(self._place) - len(self._filled)} of the stack's {len(self._place)} "
                                "frames are missing from its objects")
        # (slice, row, column[, sample]) in memory -> (column, row, slice[, sample]) by index, no copy
        axes = (2, 1, 0) if self._out.ndim == 3 else (2, 1, 0, 3)
        return self._out.transpose(axes)


def assemble(stack: Stack, datasets: dict[str, Dataset],
             pixels: Mapping[str, Pixels] | None = None) -> Float32Array:
    """The stack's voxels in the module's layout, (columns, rows, slices[, samples]), real-world values.

    The array is laid out in memory slice by slice (a Fortran-ordered (columns, rows, slices) array for
    grey images, as NIfTI stores its voxels), so that no transposed copy of the volume is made.
    ``pixels``: what ``read`` gave, by SOP Instance UID, for datasets parsed up to their Pixel Data."""
    assembly = Assembly([frame.key for frame in stack.frames])
    for sop, ds in datasets.items():
        assembly.add(ds, frames_of(ds), pixels.get(sop) if pixels is not None else None)
    return assembly.result()
