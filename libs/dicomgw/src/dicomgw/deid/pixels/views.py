"""8-bit views of a decoded frame, the way a reader would see it, for the OCR engines.

Grey frames are stretched from their own minimum to maximum (text burned in at the top of the range, as
modalities do, stays white; MONOCHROME1 is inverted as it displays); palette frames go through their
lookup tables; colour wider than 8 bits is scaled down. Every view has the frame's rows and columns, so
a box found in the view is a box in the frame.
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, convert_color_space


def to_uint8(array: np.ndarray) -> np.ndarray:
    """``array`` stretched linearly from its minimum to its maximum onto 0..255."""
    if array.dtype == np.uint8:
        return array
    data = array.astype(np.float64)
    low, high = float(data.min()), float(data.max())
    if high <= low:
        return np.zeros(array.shape, dtype=np.uint8)
    return np.rint((data - low) * (255.0 / (high - low))).astype(np.uint8)


def grey_view(frame: np.ndarray, photometric: str) -> np.ndarray:
    view = to_uint8(frame)
    if photometric == "MONOCHROME1":
        view = 255 - view
    return view


def colour_view(frame: np.ndarray) -> np.ndarray:
    """RGB samples of any width as 8-bit RGB (scaled from zero: colour keeps its balance)."""
    if frame.dtype == np.uint8:
        return frame
    high = float(frame.max())
    if high <= 0:
        return np.zeros(frame.shape, dtype=np.uint8)
    return np.rint(frame.astype(np.float64) * (255.0 / high)).astype(np.uint8)


def palette_table(ds: Dataset) -> np.ndarray:
    """The palette as 8-bit RGB rows for every index from 0 up to the last one mapped (indices below the
    first mapped value take the first colour, as PS3.3 C.7.6.3.1.5 says)."""
    descriptor = ds.RedPaletteColorLookupTableDescriptor
    entries, first = int(descriptor[0]) or 65536, int(descriptor[1])
    dtype = np.uint16 if int(ds.BitsAllocated) == 16 else np.uint8
    indices = np.arange(first, first + entries, dtype=np.int64).clip(0, np.iinfo(dtype).max).astype(dtype)
    colours = apply_color_lut(indices, ds).reshape(-1, 3)
    table = np.concatenate([np.repeat(colours[:1], first, axis=0), colours]) if first else colours
    if int(table.max(initial=0)) > 255:  # 16-bit entries
        table = table >> 8
    return table.astype(np.uint8)


def view(frame: np.ndarray, photometric: str, table: np.ndarray | None = None) -> np.ndarray:
    """The 8-bit view of one decoded frame (grey, or RGB rows x columns x 3)."""
    if photometric == "PALETTE COLOR":
        if table is None:
            raise ValueError("a palette frame needs its palette")
        return table[np.clip(frame.astype(np.int64), 0, len(table) - 1)]
    if frame.ndim == 2:
        return grey_view(frame, photometric)
    if photometric.startswith("YBR"):
        frame = convert_color_space(frame, "YBR_FULL", "RGB")
    return colour_view(frame)
