"""Redaction: fill boxes of a frame with a value taken from the image's own background.

A box is filled with the value that dominates it (the plate or the black the text was written on:
glyphs are thin, the ground between them is most of a text box), else with the value that dominates a
thin ring just outside it, else with the ring's median per sample (text over anatomy). Palette indices
are never averaged: the most frequent index is used. A whole frame is filled with its most frequent
value.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from dicomgw.deid.pixels.ocr import Box

RING = 4              # pixels of background looked at around a box
DOMINANT = 0.4        # share of the ring a single value needs to be taken as the plate's colour


def pad(box: Box, shape: tuple[int, ...], margin: int | None = None) -> Box:
    """``box`` grown by ``margin`` pixels (default: a tenth of its short side, at least 2), clipped.

    The detector's boxes already reach past the glyphs (PP-OCR grows them by half their height); the
    margin catches anti-aliased edges and the strokes a recogniser's box cuts."""
    row0, col0, row1, col1 = box
    if margin is None:
        margin = max(2, round(0.1 * min(row1 - row0, col1 - col0)))
    rows, columns = shape[:2]
    return max(0, row0 - margin), max(0, col0 - margin), min(rows, row1 + margin), min(columns, col1 + margin)


def overlaps(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def contains(outer: Box, inner: Box) -> bool:
    return outer[0] <= inner[0] and outer[1] <= inner[1] and inner[2] <= outer[2] and inner[3] <= outer[3]


def merge(boxes: Iterable[Box]) -> list[Box]:
    """The boxes without those inside another one. Overlapping boxes stay apart: joining them into
    their bounding box would let a band of a region rule grow over the image beside a word."""
    unique = sorted(set(boxes), key=lambda b: (b[2] - b[0]) * (b[3] - b[1]), reverse=True)
    out: list[Box] = []
    for box in unique:
        if not any(contains(other, box) for other in out):
            out.append(box)
    return sorted(out)


def _mode(samples: np.ndarray) -> tuple[np.ndarray, float]:
    """The most frequent sample (row of ``samples``) and its share."""
    values, counts = np.unique(samples, axis=0, return_counts=True)
    best = int(np.argmax(counts))
    return values[best], float(counts[best]) / float(len(samples))


def fill_value(frame: np.ndarray, box: Box, *, indices: bool = False) -> np.ndarray:
    """The background value (one per sample) a box of ``frame`` is filled with."""
    rows, columns = frame.shape[:2]
    samples = frame.reshape(rows, columns, -1)
    row0, col0, row1, col1 = box
    value, share = _mode(samples[row0:row1, col0:col1].reshape(-1, samples.shape[-1]))
    if share >= DOMINANT:
        return value
    outer = pad(box, frame.shape, RING)
    ring = np.ones((outer[2] - outer[0], outer[3] - outer[1]), dtype=bool)
    ring[row0 - outer[0]:row1 - outer[0], col0 - outer[1]:col1 - outer[1]] = False
    around = samples[outer[0]:outer[2], outer[1]:outer[3]][ring]
    if around.size == 0:  # the box is the whole frame
        around = samples.reshape(-1, samples.shape[-1])
    value, share = _mode(around)
    if indices or share >= DOMINANT:
        return value
    median = np.median(around.astype(np.float64), axis=0)
    return np.rint(median).astype(frame.dtype)


def redact(frame: np.ndarray, boxes: Iterable[Box], *, indices: bool = False) -> list[tuple[Box, np.ndarray]]:
    """Fill ``boxes`` of ``frame`` in place; each box with the fill it got (fills are computed on the
    frame as given, before any box is filled, so neighbouring boxes do not feed each other)."""
    planned = [(box, fill_value(frame, box, indices=indices)) for box in boxes]
    for (row0, col0, row1, col1), value in planned:
        frame[row0:row1, col0:col1] = value if frame.ndim == 3 else value[0]
    return planned


def whole_frame_fill(frame: np.ndarray) -> np.ndarray:
    rows, columns = frame.shape[:2]
    return _mode(frame.reshape(rows * columns, -1))[0]
