"""Rendered images (PS3.18 8.3.5.1): one decoded frame to JPEG or PNG through modality and VOI transforms.

Pure CPU work on arrays and pydicom Datasets; run it off the event loop.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut

from dicomgw.dicom.parse import BULK_BASE
from dicomgw.errors import BadRequest, NotAcceptable

RENDERED_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif")
# Attributes whose values sit in bulk data (so are missing from the metadata) yet rendering needs
NEEDS_WHOLE_DATASET = ("ModalityLUTSequence", "VOILUTSequence", "RedPaletteColorLookupTableData",
                       "SegmentedRedPaletteColorLookupTableData")
_WINDOW_FUNCTIONS = {"linear": "linear", "linear-exact": "linear_exact",
                     "linear_exact": "linear_exact", "sigmoid": "sigmoid"}


@dataclass(frozen=True)
class RenderOptions:
    media_type: str = "image/jpeg"
    window: tuple[float, float, str] | None = None  # center, width, function
    viewport: tuple[int, int] | None = None  # width, height to fit in
    quality: int = 90
    enlarge: bool = True  # whether a viewport larger than the image scales it up (not thumbnails)


def _parse_window(window: str) -> tuple[float, float, str]:
    parts = [p.strip() for p in window.split(",")]
    try:
        center, width = float(parts[0]), float(parts[1])
    except (ValueError, IndexError) as exc:
        raise BadRequest("window must be center,width[,function]") from exc
    function = _WINDOW_FUNCTIONS.get(parts[2].lower() if len(parts) > 2 else "linear")
    if function is None or len(parts) > 3 or not np.isfinite([center, width]).all():
        raise BadRequest("window function must be linear, linear-exact or sigmoid")
    if width <= 0 or (function == "linear" and width < 1):
        raise BadRequest("window width must be > 0 (>= 1 for linear)")
    return center, width, function


def _parse_viewport(viewport: str) -> tuple[int, int]:
    parts = viewport.split(",")
    try:
        width, height = int(parts[0]), int(parts[1])
    except (ValueError, IndexError) as exc:
        raise BadRequest("viewport must be width,height") from exc
    if not (0 < width <= 8192 and 0 < height <= 8192):
        raise BadRequest("viewport width and height must be 1..8192")
    return width, height


def parse_options(media_type: str, window: str | None, viewport: str | None,
                  quality: str | None, *, enlarge: bool = True) -> RenderOptions:
    """Rendering query parameters (PS3.18 8.3.5.1.3) checked; BadRequest when malformed."""
    q = 90
    if quality:
        if not quality.isdigit() or not 1 <= int(quality) <= 100:
            raise BadRequest("quality must be 1..100")
        q = int(quality)
    return RenderOptions(media_type, _parse_window(window) if window else None,
                         _parse_viewport(viewport) if viewport else None, q, enlarge)


def header_from_metadata(metadata_json: str) -> Dataset:
    """The instance's attributes from its stored DICOM JSON (bulk values left empty)."""
    return Dataset.from_json(json.loads(metadata_json.replace(BULK_BASE, "")),
                             bulk_data_uri_handler=lambda tag, vr, uri: None)


def needs_whole_dataset(header: Dataset) -> bool:
    return any(keyword in header for keyword in NEEDS_WHOLE_DATASET) or \
        str(header.get("PhotometricInterpretation", "")) == "PALETTE COLOR"


def _functional(ds: Dataset, index: int, sequence: str, keyword: str) -> Any:
    """An attribute of a frame: per-frame group, then shared group, then the top level."""
    for groups in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        items = ds.get(groups)
        if not items:
            continue
        item = items[index] if groups.startswith("PerFrame") and index < len(items) else items[0]
        inner = item.get(sequence)
        if inner and keyword in inner[0] and inner[0][keyword].value not in (None, ""):
            return inner[0][keyword].value
    value = ds.get(keyword)
    return None if value in (None, "") else value


def _first(value: Any) -> float:
    """The first of a multi-valued number (WindowCenter may hold several)."""
    if isinstance(value, MultiValue | list | tuple):
        value = value[0]
    return float(value)


def modality_values(arr: np.ndarray, ds: Dataset, index: int) -> np.ndarray:
    """Stored values to modality values: Modality LUT, else rescale slope and intercept."""
    if "ModalityLUTSequence" in ds:
        return np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
    slope = _functional(ds, index, "PixelValueTransformationSequence", "RescaleSlope")
    intercept = _functional(ds, index, "PixelValueTransformationSequence", "RescaleIntercept")
    values = arr.astype(np.float64)
    if slope is not None:
        values = values * _first(slope)
    if intercept is not None:
        values = values + _first(intercept)
    return values


def _window(values: np.ndarray, ds: Dataset, index: int,
            options: RenderOptions) -> tuple[float, float, str]:
    if options.window is not None:
        return options.window
    center = _functional(ds, index, "FrameVOILUTSequence", "WindowCenter")
    width = _functional(ds, index, "FrameVOILUTSequence", "WindowWidth")
    if center is not None and width is not None and _first(width) >= 1:
        function = str(_functional(ds, index, "FrameVOILUTSequence", "VOILUTFunction") or "LINEAR")
        return _first(center), _first(width), _WINDOW_FUNCTIONS.get(function.lower(), "linear")
    lo, hi = float(values.min()), float(values.max())
    return (lo + hi) / 2, max(hi - lo, 1.0), "linear_exact"


def apply_window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """VOI window (PS3.3 C.11.2.1.2) to 8 bits."""
    if function == "sigmoid":
        out = 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    elif function == "linear_exact":
        out = (values - center) / width + 0.5
    elif width <= 1:
        out = (values > center - 0.5).astype(np.float64)
    else:
        out = (values - (center - 0.5)) / (width - 1) + 0.5
    return np.asarray(np.clip(np.rint(out * 255.0), 0, 255), dtype=np.uint8)


def _grey(arr: np.ndarray, ds: Dataset, index: int, options: RenderOptions) -> Image.Image:
    if "VOILUTSequence" in ds and options.window is None:
        from pydicom.pixels import apply_voi_lut

        values = np.asarray(apply_voi_lut(arr, ds), dtype=np.float64)
        lo, hi = float(values.min()), float(values.max())
        grey = apply_window(values, (lo + hi) / 2, max(hi - lo, 1.0), "linear_exact")
    else:
        values = modality_values(arr, ds, index)
        grey = apply_window(values, *_window(values, ds, index, options))
    if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        grey = 255 - grey
    return Image.fromarray(grey, "L")


def _colour(arr: np.ndarray, ds: Dataset) -> Image.Image:
    """RGB samples (decoders already turned YCbCr into RGB) or a palette, scaled to 8 bits."""
    if str(ds.get("PhotometricInterpretation", "")) == "PALETTE COLOR":
        rgb = np.asarray(apply_color_lut(arr, ds))
        top = 255 if rgb.dtype == np.uint8 else 65535
    else:
        rgb = arr
        top = 2 ** int(ds.get("BitsStored") or ds.get("BitsAllocated") or 8) - 1
    if rgb.dtype != np.uint8 or top != 255:
        rgb = np.clip(rgb.astype(np.float64) * (255.0 / top), 0, 255).astype(np.uint8)
    return Image.fromarray(rgb, "RGB")


def _fit(image: Image.Image, viewport: tuple[int, int] | None, enlarge: bool) -> Image.Image:
    if viewport is None:
        return image
    scale = min(viewport[0] / image.width, viewport[1] / image.height)
    if not enlarge:
        scale = min(scale, 1.0)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image if size == image.size else image.resize(size, Image.Resampling.LANCZOS)


def encode(image: Image.Image, options: RenderOptions) -> bytes:
    out = io.BytesIO()
    if options.media_type == "image/png":
        image.save(out, format="PNG")
    elif options.media_type == "image/gif":
        image.save(out, format="GIF")
    else:
        image.save(out, format="JPEG", quality=options.quality)
    return out.getvalue()


def render_frame(arr: np.ndarray, ds: Dataset, index: int, options: RenderOptions) -> bytes:
    """One decoded frame (RGB already for colour) as an 8-bit image in ``options.media_type``."""
    colour = arr.ndim == 3 or str(ds.get("PhotometricInterpretation", "")) == "PALETTE COLOR"
    if arr.ndim == 3 and arr.shape[-1] != 3:
        raise NotAcceptable("only 1- and 3-sample images can be rendered")
    image = _colour(arr, ds) if colour else _grey(arr, ds, index, options)
    return encode(_fit(image, options.viewport, options.enlarge), options)
