"""Clean Pixel Data (PS3.15 113101) on real pixel data with text burned in at known boxes.

The corpus (tests/textimages.py) crops real images of pydicom and pydicom-data to their text-free part
and burns legible strings into them with Pillow: several fonts, sizes from 8 pixels, contrasts, places,
some turned 12 or 90 degrees; 8-bit RGB and palette ultrasound, 10-bit MONOCHROME1 CR, 12-bit MR,
16-bit CT, text in one frame only of a JPEG baseline cine, a JPEG-LS lossless original. The checks do
not take the library's word for anything: coverage is measured against the boxes the text was drawn
at, pixels are compared decoded, and an independent OCR reads what is left: Tesseract (the other engine)
and RapidOCR at a scale neither the finder nor the proof uses. Before cleaning that OCR must read the
strings (else the test proves nothing); after, none.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, JPEGLSLossless

from dicomgw.deid.pixels import (
    CLEAN_PIXEL_DATA,
    CleanResult,
    Device,
    RapidOcr,
    Tesseract,
    Word,
    candidate,
    clean_pixels,
    shipped,
)
from dicomgw.deid.pixels import codecs as pixel_codecs
from dicomgw.deid.pixels.regions import load as load_rules
from dicomgw.deid.pixels.views import palette_table, view
from tests.textimages import Rendered, base_path, encapsulated, frames_of, load_base, reads, with_texts

OUTSIDE_LIMIT = 0.02   # share of an image allowed to change outside the text boxes and their margin
COVERED = 0.99         # share of every text box that must be redacted
READ_BEFORE = 0.8      # share of the strings the independent RapidOCR must read before cleaning
LOSSY_TOLERANCE = 16   # of 255: what JPEG encoding again may move a pixel by


class Blind:
    """An OCR that reads nothing (to test the rules and the checks without OCR)."""
    name = "blind"

    def read(self, image: np.ndarray) -> list[Word]:
        return []


class Always:
    """An OCR that reads the same words in every frame."""
    name = "always"

    def __init__(self, text: str, box: tuple[int, int, int, int]) -> None:
        self.word = Word(box, text, 0.99, self.name)

    def read(self, image: np.ndarray) -> list[Word]:
        return [self.word]


class Forbidden:
    name = "forbidden"

    def read(self, image: np.ndarray) -> list[Word]:
        raise AssertionError("OCR ran on an image that is no candidate")


@pytest.fixture(scope="module")
def independent() -> list[object]:
    assert Tesseract.available(), "Tesseract is missing: make tools-tesseract installs it"
    # the finder reads at 3 times or up to 1024 pixels, the proof at 2 times or up to 736: this at neither
    return [RapidOcr(target=900, max_scale=2.5, box_thresh=0.3, name="rapidocr-900"), Tesseract(scale=2.0)]


def _views(ds: Dataset) -> list[np.ndarray]:
    decoded = pixel_codecs.decode(ds)
    table = palette_table(ds) if decoded.indices else None
    return [view(frame, decoded.photometric, table) for frame in decoded.values]


def _read(reader: object, image: np.ndarray) -> list[str]:
    if isinstance(reader, Tesseract):  # light text on dark: Tesseract reads the negative of the grey view
        grey = image if image.ndim == 2 else np.asarray(Image.fromarray(image).convert("L"))
        return [w.text for w in reader.read(255 - grey)]
    return [w.text for w in reader.read(image)]  # type: ignore[attr-defined]


def _strings_read(readers: Sequence[object], ds: Dataset, rendered: dict[int, list[Rendered]]
                  ) -> dict[str, list[str]]:
    views = _views(ds)
    out: dict[str, list[str]] = {}
    for reader in readers:
        for frame, texts in rendered.items():
            lines = _read(reader, views[frame])
            out.setdefault(reader.name, []).extend(  # type: ignore[attr-defined]
                t.text.string for t in texts if reads(lines, t.text.string))
    return out


def _mask(boxes: Sequence[tuple[int, int, int, int]], shape: tuple[int, ...]) -> np.ndarray:
    mask = np.zeros(shape[:2], dtype=bool)
    for row0, col0, row1, col1 in boxes:
        mask[row0:row1, col0:col1] = True
    return mask


def _changed(before: np.ndarray, after: np.ndarray, tolerance: int = 0) -> np.ndarray:
    diff = np.abs(before.astype(np.int64) - after.astype(np.int64)) > tolerance
    return diff.any(axis=-1) if diff.ndim == 3 else diff


def assert_cleaned(original: Dataset, rendered: dict[int, list[Rendered]], result: CleanResult,
                   readers: Sequence[object], *, lossless: bool = True) -> None:
    assert result.status == "clean", result.reasons
    cleaned = result.dataset
    assert cleaned is not None
    assert cleaned.BurnedInAnnotation == "NO"
    assert CLEAN_PIXEL_DATA[0] in [str(i.CodeValue) for i in cleaned.DeidentificationMethodCodeSequence]
    before, after = pixel_codecs.decode(original).values, pixel_codecs.decode(cleaned).values
    assert before.shape == after.shape
    for frame in range(before.shape[0]):
        texts = rendered.get(frame, [])
        boxes = result.boxes.get(frame, [])
        redacted = _mask(boxes, before.shape[1:])
        allowed = np.zeros(before.shape[1:3], dtype=bool)
        for text in texts:
            row0, col0, row1, col1 = text.box
            share = redacted[row0:row1, col0:col1].mean()
            assert share >= COVERED, f"frame {frame}: {text.text} only {share:.1%} redacted"
            if lossless:  # nothing of the glyphs is left: each fill is one value
                inside = after[frame, row0:row1, col0:col1][redacted[row0:row1, col0:col1]]
                values = np.unique(inside.reshape(len(inside), -1), axis=0)
                fills = sum(1 for b in boxes if b[0] < row1 and row0 < b[2] and b[1] < col1 and col0 < b[3])
                assert len(values) <= fills, f"frame {frame}: {text.text} box holds {len(values)} values"
            margin = max(6, text.text.size // 2)
            allowed[max(0, row0 - margin):row1 + margin, max(0, col0 - margin):col1 + margin] = True
        # a lossy copy differs a little everywhere its blocks were encoded again: a change is one past that
        changed = _changed(before[frame], after[frame], 0 if lossless else LOSSY_TOLERANCE)
        outside = (changed & ~allowed).mean()
        assert outside <= OUTSIDE_LIMIT, f"frame {frame}: {outside:.1%} of the image changed outside the text"
    assert_unreadable(original, cleaned, rendered, readers)


def assert_unreadable(original: Dataset, cleaned: Dataset, rendered: dict[int, list[Rendered]],
                      readers: Sequence[object]) -> None:
    strings = [t.text.string for texts in rendered.values() for t in texts]
    read_before = _strings_read(readers[:1], original, rendered)["rapidocr-900"]
    assert len(read_before) >= READ_BEFORE * len(strings), f"the checking OCR reads only {read_before}"
    left = {name: found for name, found in _strings_read(readers, cleaned, rendered).items() if found}
    assert not left, f"still readable after cleaning: {left}"


# ---- text at known boxes -------------------------------------------------------------------------

@pytest.mark.parametrize(("base", "seed"), [
    ("us-rgb", 5),       # GE LOGIQ 700 ultrasound, 8-bit RGB, text over colour Doppler too
    ("us-palette", 0),   # Philips CX50 ultrasound, 8-bit palette colour (indices redacted)
    ("ct", 0),           # 16-bit signed grey
    ("mr", 1),           # 12-bit grey
    ("cr", 1),           # 10-bit MONOCHROME1
])
def test_burned_in_text_is_redacted_unreadable_and_the_rest_of_the_image_kept(
        base: str, seed: int, independent: list[object]) -> None:
    original, rendered = with_texts(base, seed)
    original.BurnedInAnnotation = "YES"
    result = clean_pixels(original)
    assert_cleaned(original, rendered, result, independent)
    assert pixel_codecs.transfer_syntax(result.dataset) == pixel_codecs.transfer_syntax(original)  # type: ignore[arg-type]


def test_text_in_one_frame_of_a_jpeg_baseline_cine_is_redacted_and_the_copy_says_lossy(
        independent: list[object]) -> None:
    native, rendered = with_texts("us-cine", 3, frames=(1,))
    original = encapsulated(native, "jpeg")
    original.pop("LossyImageCompressionRatio", None)
    first, second = pixel_codecs.decode(original).codestreams
    result = clean_pixels(original)
    assert_cleaned(original, rendered, result, independent, lossless=False)
    cleaned = result.dataset
    assert cleaned is not None
    assert cleaned.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    assert cleaned.PhotometricInterpretation == "YBR_FULL_422"
    assert cleaned.LossyImageCompression == "01"
    # the original's own compression, then this one, each with its ratio
    assert list(cleaned.LossyImageCompressionMethod) == ["ISO_10918_1", "ISO_10918_1"]
    assert len(cleaned.LossyImageCompressionRatio) == 2
    assert all(float(r) > 1 for r in cleaned.LossyImageCompressionRatio)
    # the frame without text keeps its codestream: it is not compressed a second time
    kept, redone = pixel_codecs.decode(cleaned).codestreams
    assert kept == first and redone != second
    assert list(result.boxes) == [1]
    # re-encoded at the original's quality (90 here), read back from the new quantisation tables
    assert abs(pixel_codecs.jpeg_quality(redone) - 90) <= 1


def test_a_jpegls_lossless_original_stays_lossless_and_keeps_every_other_pixel(
        independent: list[object]) -> None:
    native, rendered = with_texts("us-grey", 2)
    original = encapsulated(native, "jpegls")
    result = clean_pixels(original, device=Device("Philips Medical Systems", "EPIQ 7C"))
    assert_cleaned(original, rendered, result, independent)
    cleaned = result.dataset
    assert cleaned is not None
    assert cleaned.file_meta.TransferSyntaxUID == JPEGLSLossless
    assert "LossyImageCompression" not in cleaned
    before, after = pixel_codecs.decode(original).values, pixel_codecs.decode(cleaned).values
    outside = ~_mask(result.boxes[0], before.shape[1:])
    assert np.array_equal(before[0][outside], after[0][outside])


def test_real_burned_in_text_of_a_jpeg2000_lossless_ultrasound_is_gone(independent: list[object]) -> None:
    """pydicom-data's GE LOGIQ 700 image as the device wrote it (its own header and measurements)."""
    original = pydicom.dcmread(base_path("data_store", "US1_J2KR.dcm"))
    words = [w for w in independent[0].read(_views(original)[0])  # type: ignore[attr-defined]
             if sum(c.isalnum() for c in w.text) >= 4]
    assert len(words) >= 8, "the checking OCR no longer reads the device's text"
    result = clean_pixels(original)
    assert result.status == "clean", result.reasons
    cleaned = result.dataset
    assert cleaned is not None
    assert cleaned.file_meta.TransferSyntaxUID == JPEG2000Lossless
    assert cleaned.PhotometricInterpretation == "YBR_RCT"
    assert (0, 0, 108, 640) in result.boxes[0]  # the LOGIQ 700 region rule
    after = _views(cleaned)[0]
    for reader in independent:
        lines = _read(reader, after)
        assert not [w.text for w in words if reads(lines, w.text)], reader.name  # type: ignore[attr-defined]
    before, decoded = pixel_codecs.decode(original).values, pixel_codecs.decode(cleaned).values
    outside = ~_mask(result.boxes[0], before.shape[1:])
    assert np.array_equal(before[0][outside], decoded[0][outside])


# ---- no text, no candidate, nothing decodable ---------------------------------------------------

@pytest.mark.parametrize("base", ["ct-small", "mr-multiframe"])
def test_images_without_text_come_back_clean_and_pixel_identical(base: str) -> None:
    original = load_base(base)
    original.BurnedInAnnotation = "YES"
    result = clean_pixels(original)
    assert result.status == "clean" and result.boxes == {} and result.passes == 1, result.reasons
    assert result.dataset is not None
    assert result.dataset.PixelData == original.PixelData
    assert result.dataset.BurnedInAnnotation == "NO"
    assert original.BurnedInAnnotation == "YES"  # the input is never changed


def test_what_may_carry_no_text_is_untouched_without_ocr() -> None:
    ct = load_base("ct-small")
    us = load_base("us-grey")
    us.BurnedInAnnotation = "NO"
    cr = load_base("cr")
    assert not candidate(ct) and not candidate(us) and candidate(cr)
    for ds in (ct, us):
        result = clean_pixels(ds, finder=Forbidden(), proof=Forbidden())
        assert result.status == "untouched" and result.dataset is ds


def test_pixel_data_that_cannot_be_decoded_is_excluded_not_passed_on() -> None:
    original = encapsulated(load_base("us-cine"), "jpeg")
    broken = bytearray(original.PixelData)
    start = broken.index(b"\xff\xda")  # the scan: garbage from here on
    broken[start + 20:] = b"\x00\xff\x01" * ((len(broken) - start - 20) // 3) + b"\x00" * (
        (len(broken) - start - 20) % 3)
    original.PixelData = bytes(broken)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = clean_pixels(original, finder=Blind(), proof=Blind())
    assert result.status == "excluded" and result.dataset is None
    assert "decoded" in result.reasons[0]
    video = load_base("us-cine")
    video.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.102"  # MPEG-4 AVC/H.264
    result = clean_pixels(video, finder=Blind(), proof=Blind())
    assert result.status == "excluded" and "cannot be redacted" in result.reasons[0]


# ---- the proof, the rules, the colour spaces ------------------------------------------------------

def test_text_the_residual_pass_still_reads_excludes_the_image() -> None:
    original = load_base("ct-small")
    original.BurnedInAnnotation = "YES"
    result = clean_pixels(original, finder=Blind(), proof=Always("DOE JANE", (10, 10, 30, 90)))
    assert result.status == "excluded" and result.dataset is None
    assert result.passes == 3
    assert "'DOE JANE'" in result.reasons[0]


def test_the_checks_catch_text_left_in_the_image(independent: list[object]) -> None:
    """An OCR that sees nothing makes a 'clean' image that still shows its text: the checks fail it."""
    original, rendered = with_texts("ct", 0)
    original.BurnedInAnnotation = "YES"
    result = clean_pixels(original, finder=Blind(), proof=Blind())
    assert result.status == "clean" and result.boxes == {}
    with pytest.raises(AssertionError, match="redacted"):
        assert_cleaned(original, rendered, result, independent)
    with pytest.raises(AssertionError, match="still readable"):
        assert_unreadable(original, result.dataset, rendered, independent)  # type: ignore[arg-type]


def test_region_rules_redact_their_boxes_and_blank_whole_frames() -> None:
    original = load_base("mr-multiframe")  # 10 frames of 64 x 64
    original.BurnedInAnnotation = "YES"
    rules = load_rules("""{"version": "test-1", "rules": [
        {"manufacturer": "acme", "model": "*", "rows": 64, "columns": 64,
         "boxes": [[0, 0, 8, 64]], "frames": [0, 3]}]}""")
    result = clean_pixels(original, device=Device("ACME Imaging", "X1"), rules=rules,
                          finder=Blind(), proof=Blind())
    assert result.status == "clean" and result.rules_version == "test-1"
    assert result.whole_frames == [0, 3]
    before, after = frames_of(original), frames_of(result.dataset)  # type: ignore[arg-type]
    for frame in range(10):
        if frame in (0, 3):
            assert len(np.unique(after[frame])) == 1
        else:
            assert len(np.unique(after[frame][:8])) == 1
            assert np.array_equal(before[frame][8:], after[frame][8:])
    other = clean_pixels(original, device=Device("Other", "X1"), rules=rules, finder=Blind(), proof=Blind())
    assert other.boxes == {} and other.dataset.PixelData == original.PixelData  # type: ignore[union-attr]


def test_shipped_region_rules_match_the_devices_they_name() -> None:
    rules = shipped()
    assert rules.version
    for name in ("OBXXXX1A.dcm", "US1_UNCR.dcm", "gdcm-US-ALOKA-16.dcm", "JPGLosslessP14SV1_1s_1f_8b.dcm"):
        ds = pydicom.dcmread(base_path("data_store", name), stop_before_pixels=True)
        device = Device.of(ds)
        assert rules.for_image(device.manufacturer, device.model, ds.Rows, ds.Columns), name


def test_native_ybr_full_422_is_redacted_in_whole_pairs_and_keeps_every_other_byte() -> None:
    original = pydicom.dcmread(base_path("pydicom", "SC_ybr_full_422_uncompressed.dcm"))
    original.BurnedInAnnotation = "YES"
    box = (10, 11, 20, 31)  # odd columns: widened to whole pairs
    result = clean_pixels(original, finder=Always("ACC 1234", box), proof=Blind())
    assert result.status == "clean", result.reasons
    cleaned = result.dataset
    assert cleaned is not None and cleaned.PhotometricInterpretation == "YBR_FULL_422"
    assert result.boxes[0][0][1] % 2 == 0 and result.boxes[0][0][3] % 2 == 0
    quads_before = np.frombuffer(original.PixelData, np.uint8).reshape(100, 50, 4)
    quads_after = np.frombuffer(cleaned.PixelData, np.uint8).reshape(100, 50, 4)
    row0, col0, row1, col1 = result.boxes[0][0]
    inside = np.zeros((100, 50), dtype=bool)
    inside[row0:row1, col0 // 2:col1 // 2] = True
    assert np.array_equal(quads_before[~inside], quads_after[~inside])
    assert len(np.unique(quads_after[inside], axis=0)) == 1


def test_files_round_trip_through_a_dicom_file(tmp_path: Path) -> None:
    """What clean_pixels returns is a valid file in its transfer syntax (written and read back)."""
    original = encapsulated(load_base("us-grey"), "jpegls")
    original.BurnedInAnnotation = "YES"
    result = clean_pixels(original, finder=Always("PID 4711", (100, 100, 120, 200)), proof=Blind())
    assert result.dataset is not None
    path = tmp_path / "cleaned.dcm"
    result.dataset.save_as(path, enforce_file_format=True)
    again = pydicom.dcmread(path)
    assert np.array_equal(again.pixel_array, pixel_codecs.decode(result.dataset).values[0])
