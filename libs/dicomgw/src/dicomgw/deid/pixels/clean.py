"""clean_pixels: find burned-in text, redact it, and prove with a second OCR pass that none is left.

1. Whether to look: BurnedInAnnotation YES, or absent on a modality or SOP class that often carries
   text (``candidate``); anything else comes back untouched, without OCR.
2. Decode every frame (``codecs``); what cannot be decoded is excluded, never passed on.
3. Find text per frame: the finder OCR on an 8-bit view, plus the device's region rules (boxes, or
   whole frames blanked); boxes are padded and redacted with the image's own background (``redact``).
4. Encode in kind (``codecs``: native stays native, lossless stays lossless, lossy says so), then decode
   that result again as a reader would.
5. Proof: the residual OCR (other settings than the finder) reads every frame of the decoded result.
   Whatever it still reads as text is added to the boxes and the image is redacted and checked again,
   up to ``max_rounds`` passes; only a pass that reads nothing text-like anywhere makes the result
   clean (BurnedInAnnotation NO, 113101 Clean Pixel Data Option in the De-identification Method Code
   Sequence). Otherwise the image is excluded with what was still read, and where.

An image in which no text is found comes back ``clean`` with no boxes and its Pixel Data exactly as it
was (the residual pass read it too). Call it on a de-identified dataset with the original's ``Device``
(de-identification removes Manufacturer and model unless asked to keep them).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from dicomgw.deid.pixels import codecs, redact
from dicomgw.deid.pixels.ocr import (
    Box,
    Inverted,
    LeastChannel,
    RapidOcr,
    Readers,
    TextReader,
    Turned,
    Word,
    text_like,
)
from dicomgw.deid.pixels.regions import Device, RegionRules, shipped
from dicomgw.deid.pixels.views import palette_table, view
from dicomgw.deid.profile import burned_in_candidate

CLEAN_PIXEL_DATA = ("113101", "Clean Pixel Data Option")  # PS3.16 CID 7050
# beyond the profile's own list (which excludes them without this option): projection radiography,
# intra-oral and dental panoramic, external-camera photography and microscopy often show markers or text
MORE_TEXT_MODALITIES = frozenset({"CR", "DX", "IO", "PX", "XC", "GM"})
Status = Literal["clean", "excluded", "untouched"]


@dataclass
class CleanResult:
    """``dataset`` is the cleaned copy (clean), the input itself (untouched), or None (excluded)."""
    status: Status
    dataset: Dataset | None
    boxes: dict[int, list[Box]] = field(default_factory=dict)  # frame -> redacted boxes
    whole_frames: list[int] = field(default_factory=list)       # frames blanked by a region rule
    reasons: list[str] = field(default_factory=list)
    rules_version: str = ""
    passes: int = 0  # residual OCR passes run


def candidate(ds: Dataset) -> bool:
    """Whether the pixels may show burned-in text: BurnedInAnnotation YES, or not said on a modality or
    SOP class that often has it (the profile's list, and ``MORE_TEXT_MODALITIES``)."""
    if burned_in_candidate(ds):
        return True
    said = str(ds.get("BurnedInAnnotation", "")).strip()
    return not said and str(ds.get("Modality", "")).upper() in MORE_TEXT_MODALITIES


def _large() -> RapidOcr:
    return RapidOcr(target=1024, max_scale=3.0, box_thresh=0.3, name="rapidocr-1024")


def _small() -> RapidOcr:
    return RapidOcr(target=736, max_scale=2.0, box_thresh=0.3, name="rapidocr-736")


def finder_reader() -> TextReader:
    """The OCR that finds text: PP-OCR (low box threshold) on the frame enlarged to 1024 pixels on its
    shorter side (3 times at most); turned a quarter (text written vertically) at 736 (2 times); and on
    colour frames, their least channel at 736 (white text over colour)."""
    return Readers(_large(), Turned(_small()), LeastChannel(_small()))


def proof_reader() -> TextReader:
    """The residual OCR: the same models on the negative of the decoded result, each view at the other
    scale (the same only where a frame is large enough to be read as it is at both)."""
    return Inverted(Readers(_small(), Turned(_large()), LeastChannel(_large())))


def clean_pixels(ds: Dataset, *, device: Device | None = None, rules: RegionRules | None = None,
                 finder: TextReader | None = None, proof: TextReader | None = None,
                 check_all: bool = False, max_rounds: int = 3) -> CleanResult:
    """Clean ``ds``'s pixels (see the module docstring); ``ds`` itself is never changed.

    ``check_all`` looks at every image, candidate or not. ``rules`` default to the shipped region rules,
    ``device`` to the dataset's own Manufacturer and model.
    """
    rules = rules or shipped()
    if not check_all and not candidate(ds):
        return CleanResult("untouched", ds, rules_version=rules.version)
    cleaner = _Cleaner(ds, device or Device.of(ds), rules, finder or finder_reader(), proof or proof_reader())
    return cleaner.run(max_rounds)


class _Cleaner:
    def __init__(self, ds: Dataset, device: Device, rules: RegionRules, finder: TextReader,
                 proof: TextReader) -> None:
        self.ds, self.device, self.rules, self.finder, self.proof = ds, device, rules, finder, proof
        self.boxes: dict[int, list[Box]] = {}
        self.whole: set[int] = set()

    def excluded(self, reasons: Sequence[str], passes: int = 0) -> CleanResult:
        return CleanResult("excluded", None, self._sorted_boxes(), sorted(self.whole), list(reasons),
                           self.rules.version, passes)

    def _sorted_boxes(self) -> dict[int, list[Box]]:
        return {frame: sorted(boxes) for frame, boxes in sorted(self.boxes.items()) if boxes}

    def run(self, max_rounds: int) -> CleanResult:
        try:
            decoded = codecs.decode(self.ds)
            table = palette_table(self.ds) if decoded.indices else None
        except codecs.PixelDataError as exc:
            return self.excluded([str(exc)])
        except (AttributeError, KeyError, ValueError, TypeError) as exc:
            return self.excluded([f"pixel data could not be read: {type(exc).__name__}: {exc}"])
        shape = decoded.values.shape[1:]
        self._apply_rules(decoded)
        for frame in range(decoded.values.shape[0]):
            if frame not in self.whole:
                words = self.finder.read(view(decoded.values[frame], decoded.photometric, table))
                self._add(frame, words, shape, decoded.column_step)
        to_check = [f for f in range(decoded.values.shape[0]) if f not in self.whole]
        for attempt in range(1, max_rounds + 1):
            try:
                out, final = self._redacted(decoded)
            except codecs.PixelDataError as exc:
                return self.excluded([str(exc)], attempt - 1)
            residual: dict[int, list[Word]] = {}
            for frame in to_check:
                words = [w for w in self.proof.read(view(final.values[frame], final.photometric, table))
                         if text_like(w, shape)]
                if words:
                    residual[frame] = words
            if not residual:
                self._mark_clean(out)
                return CleanResult("clean", out, self._sorted_boxes(), sorted(self.whole), [],
                                   self.rules.version, attempt)
            if attempt == max_rounds:
                reasons = [f"frame {frame}: residual OCR reads {w.text!r} at {w.box}"
                           for frame, words in sorted(residual.items()) for w in words]
                return self.excluded(reasons, attempt)
            for frame, words in residual.items():
                self._add(frame, words, shape, decoded.column_step, already_text=True)
            to_check = sorted(residual)
        raise AssertionError("unreachable")

    def _apply_rules(self, decoded: codecs.Decoded) -> None:
        frames, rows, columns = decoded.values.shape[:3]
        for rule in self.rules.for_image(self.device.manufacturer, self.device.model, rows, columns):
            for frame in range(frames):
                self.boxes.setdefault(frame, []).extend(
                    _aligned((min(r0, rows), min(c0, columns), min(r1, rows), min(c1, columns)),
                             decoded.column_step)
                    for r0, c0, r1, c1 in rule.boxes)
            if rule.frames == "all":
                self.whole.update(range(frames))
            else:
                self.whole.update(int(f) for f in rule.frames if 0 <= int(f) < frames)

    def _add(self, frame: int, words: Sequence[Word], shape: tuple[int, ...], step: int,
             already_text: bool = False) -> None:
        found = [w for w in words if already_text or text_like(w, shape)]
        if found:
            boxes = self.boxes.setdefault(frame, [])
            boxes.extend(_aligned(redact.pad(w.box, shape), step) for w in found)
            self.boxes[frame] = redact.merge(boxes)

    def _redacted(self, decoded: codecs.Decoded) -> tuple[Dataset, codecs.Decoded]:
        """A copy of the dataset with every box and whole frame redacted and encoded in kind, and its
        frames decoded again (checked equal to what was redacted unless the encoding is lossy)."""
        out = copy.deepcopy(self.ds)
        if not self.boxes and not self.whole:
            return out, decoded
        values = decoded.values.copy()
        fills: list[tuple[int, Box, np.ndarray]] = []
        rows, columns = values.shape[1:3]
        for frame in sorted(self.whole):
            fill = redact.whole_frame_fill(values[frame])
            values[frame] = fill if values.ndim == 4 else fill[0]
            fills.append((frame, (0, 0, rows, columns), fill))
        for frame, boxes in sorted(self.boxes.items()):
            if frame not in self.whole:
                done = redact.redact(values[frame], boxes, indices=decoded.indices)
                fills.extend((frame, box, fill) for box, fill in done)
        changed = sorted({frame for frame, _, _ in fills})
        if decoded.kind == "native":
            codecs.encode_native(out, decoded, values, fills)
        else:
            codecs.encode_encapsulated(out, decoded, values, changed)
        final = codecs.decode(out)
        lossy = codecs.transfer_syntax(out) in codecs.LOSSY
        if not lossy and not _same(final, values, decoded):
            raise codecs.PixelDataError("the re-encoded pixels do not decode to the redacted ones")
        return out, final

    @staticmethod
    def _mark_clean(out: Dataset) -> None:
        out.BurnedInAnnotation = "NO"
        codes = out.get("DeidentificationMethodCodeSequence") or DicomSequence()
        if not any(str(item.get("CodeValue", "")) == CLEAN_PIXEL_DATA[0] for item in codes):
            item = Dataset()
            item.CodeValue, item.CodeMeaning = CLEAN_PIXEL_DATA
            item.CodingSchemeDesignator = "DCM"
            codes.append(item)
        out.DeidentificationMethodCodeSequence = codes
        methods = out.get("DeidentificationMethod")
        values = [] if methods in (None, "") else ([methods] if isinstance(methods, str) else list(methods))
        if CLEAN_PIXEL_DATA[1] not in values:
            out.DeidentificationMethod = [*values, CLEAN_PIXEL_DATA[1]]


def _aligned(box: Box, step: int) -> Box:
    """A box widened to whole YBR_FULL_422 pairs (``step`` 2), where chroma is shared."""
    if step == 1:
        return box
    row0, col0, row1, col1 = box
    return row0, col0 - col0 % step, row1, col1 + (-col1) % step


def _same(final: codecs.Decoded, values: np.ndarray, decoded: codecs.Decoded) -> bool:
    """Whether the re-encoded frames decode to ``values`` (colour compared as the decoders give it)."""
    if final.values.shape != values.shape:
        return False
    if final.photometric == decoded.photometric:
        return bool(np.array_equal(final.values, values))
    # the colour space changed on the way (YBR_RCT codestreams decode to RGB as well): compare in RGB
    return bool(np.array_equal(final.values, values)) if final.photometric == "RGB" else False
