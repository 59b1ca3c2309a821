"""Rendered images (PS3.18 8.3.5.1): pixel data to JPEG or PNG with modality and VOI transforms."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pydicom
from PIL import Image
from pydicom.pixels import apply_modality_lut, convert_color_space, pixel_array

from dicomgw.errors import BadRequest, NotFound


@dataclass(frozen=True)
class RenderOptions:
    media_type: str = "image/jpeg"
    window: tuple[float, float, str] | None = None  # center, width, function
    viewport: tuple[int, int] | None = None
    quality: int = 90


def parse_options(media_type: str, window: str | None, viewport: str | None,
                  quality: str | None) -> RenderOptions:
    parsed_window = None
    if window:
        parts = window.split(",")
        try:
            center, width = float(parts[0]), float(parts[1])
        except (ValueError, IndexError) as exc:
            raise BadRequest("window must be center,width[,function]") from exc
        function = parts[2].lower() if len(parts) > 2 else "linear"
        if function not in ("linear", "linear_exact", "sigmoid") or width <= 0:
            raise BadRequest("window function must be linear, linear_exact or sigmoid; width > 0")
        parsed_window = (center, width, function)
    parsed_viewport = None
    if viewport:
        try:
            vw, vh = (int(v) for v in viewport.split(",")[:2])
        except ValueError as exc:
            raise BadRequest("viewport must be width,height") from exc
        if vw <= 0 or vh <= 0:
            raise BadRequest("viewport must be positive")
        parsed_viewport = (vw, vh)
    q = 90
    if quality:
        if not quality.isdigit() or not 1 <= int(quality) <= 100:
            raise BadRequest("quality must be 1..100")
        q = int(quality)
    return RenderOptions(media_type, parsed_window, parsed_viewport, q)


def _voi(arr: np.ndarray, ds: pydicom.Dataset, options: RenderOptions, index: int) -> np.ndarray:
    if options.window is not None:
        center, width, function = options.window
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        wc, ww = ds.WindowCenter, ds.WindowWidth
        center = float(wc[0] if isinstance(wc, pydicom.multival.MultiValue) else wc)
        width = float(ww[0] if isinstance(ww, pydicom.multival.MultiValue) else ww)
        function = str(ds.get("VOILUTFunction", "LINEAR")).lower()
    else:
        lo, hi = float(arr.min()), float(arr.max())
        center, width, function = (lo + hi) / 2, max(hi - lo, 1.0), "linear"
    arr = arr.astype(np.float64)
    if function == "sigmoid":
        out = 1.0 / (1.0 + np.exp(-4.0 * (arr - center) / width))
    elif function == "linear_exact":
        out = (arr - (center - width / 2)) / width
    else:
        out = ((arr - (center - 0.5)) / (width - 1)) + 0.5
    return np.clip(out * 255.0, 0, 255).astype(np.uint8)


def render(original: bytes, frame_index: int, options: RenderOptions) -> bytes:
    """One frame of an instance as an 8-bit image in the requested media type."""
    ds = pydicom.dcmread(io.BytesIO(original), stop_before_pixels=True)
    if "Rows" not in ds:
        raise NotFound("the instance has no image to render")
    n = int(ds.get("NumberOfFrames", 1) or 1)
    if frame_index >= n:
        raise NotFound(f"the instance has {n} frame(s)")
    try:
        arr = pixel_array(io.BytesIO(original), index=frame_index if n > 1 else None)
    except Exception as exc:
        raise NotFound(f"the pixel data cannot be decoded: {type(exc).__name__}") from exc
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if int(ds.get("SamplesPerPixel", 1)) == 1:
        if photometric == "PALETTE COLOR":
            from pydicom.pixels import apply_color_lut

            rgb = apply_color_lut(arr, ds)
            image = Image.fromarray((rgb / max(rgb.max(), 1) * 255).astype(np.uint8), "RGB")
        else:
            values = apply_modality_lut(arr, ds)
            gray = _voi(values, ds, options, frame_index)
            if photometric == "MONOCHROME1":
                gray = 255 - gray
            image = Image.fromarray(gray, "L")
    else:
        if photometric.startswith("YBR") and not ds.file_meta.TransferSyntaxUID.is_encapsulated:
            arr = convert_color_space(arr, photometric, "RGB")
        if arr.dtype != np.uint8:
            arr = (arr.astype(np.float64) / max(float(arr.max()), 1.0) * 255).astype(np.uint8)
        image = Image.fromarray(arr, "RGB")
    if options.viewport is not None:
        image.thumbnail(options.viewport, Image.Resampling.LANCZOS)
    out = io.BytesIO()
    if options.media_type == "image/png":
        image.save(out, format="PNG")
    elif options.media_type == "image/gif":
        image.save(out, format="GIF")
    else:
        image.save(out, format="JPEG", quality=options.quality)
    return out.getvalue()
