"""Text rendered into real pixel data at known boxes: the corpus of the pixel-cleaning tests and bench.

A string is drawn with Pillow (FreeType) into an 8-bit ink mask, then written into the frame's own
sample values (8/12/16-bit grey, RGB, palette indices) with the mask as coverage, so the text is part of
the pixels exactly as a modality burns it in. ``Rendered.box`` is the bounding box of every pixel the
ink touched (row0, col0, row1, col1; ends exclusive).
"""

from __future__ import annotations

import dataclasses
import difflib
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")  # fonts-dejavu-core
FONTS = ("DejaVuSans.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansCondensed.ttf")
# what a modality burns in: names, identifiers, dates, times, institutions
STRINGS = (
    "DOE^JANE", "PID 4711-0815", "12/03/1968", "ST ELSEWHERE HOSP", "ACC 99812734", "14:22:05",
    "SMITH JOHN", "MRN 55012987", "2024-01-15", "RADIOLOGY DEPT B", "DOB 1957 04 30", "Dr HOUSE",
)


@dataclass(frozen=True)
class Text:
    string: str
    row: int
    col: int
    size: int = 14           # font size in pixels (em)
    font: str = FONTS[0]
    value: float | tuple[int, ...] = 1.0  # grey: fraction of the frame's range; colour: RGB/index
    angle: float = 0.0       # degrees, counter-clockwise about the top left corner


@dataclass(frozen=True)
class Rendered:
    text: Text
    box: tuple[int, int, int, int]


def font(name: str, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    path = FONT_DIR / name
    if path.exists():
        return ImageFont.truetype(str(path), size)
    return ImageFont.load_default(size=size)  # Pillow's own font, when the Debian fonts are absent


def ink_mask(text: Text, rows: int, columns: int) -> np.ndarray:
    """The text's coverage (0..255) in a rows x columns canvas."""
    face = font(text.font, text.size)
    _, _, right, bottom = face.getbbox(text.string)
    tile = Image.new("L", (int(right) + 4, int(bottom) + 4), 0)
    ImageDraw.Draw(tile).text((2, 2), text.string, fill=255, font=face)
    if text.angle:
        tile = tile.rotate(text.angle, expand=True, resample=Image.Resampling.BICUBIC)
    canvas = Image.new("L", (columns, rows), 0)
    canvas.paste(tile, (text.col, text.row))
    return np.asarray(canvas)


def render(frame: np.ndarray, texts: Iterable[Text], *, lut: np.ndarray | None = None) -> list[Rendered]:
    """Burn ``texts`` into ``frame`` (rows x columns [x samples]) in place; their ink boxes.

    Grey frames take ``value`` as a fraction of the frame's own range (0: its minimum, 1: its maximum);
    RGB frames an (r, g, b) tuple; palette frames (``lut`` given, rows of RGB) the index whose colour
    is nearest to ``value``.
    """
    out = []
    rows, columns = frame.shape[:2]
    low, high = float(frame.min()), float(frame.max())
    for text in texts:
        mask = ink_mask(text, rows, columns)
        ys, xs = np.nonzero(mask > 24)
        if ys.size == 0:
            raise ValueError(f"{text.string!r} at {text.row},{text.col} falls outside the frame")
        alpha = mask.astype(np.float64) / 255.0
        if lut is not None:
            index = int(np.argmin(((lut.astype(np.int64) - np.asarray(text.value)) ** 2).sum(axis=1)))
            frame[mask > 127] = index  # indices do not blend
        elif frame.ndim == 3:
            colour = np.asarray(text.value, dtype=np.float64)
            blended = frame * (1 - alpha[..., None]) + colour * alpha[..., None]
            frame[...] = np.rint(blended).astype(frame.dtype)
        else:
            ink = low + float(text.value) * (high - low)  # type: ignore[arg-type]
            blended = frame * (1 - alpha) + ink * alpha
            frame[...] = np.rint(blended).astype(frame.dtype)
        out.append(Rendered(text, (int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1)))
    return out


_ALNUM = re.compile(r"[^A-Z0-9]")


def normalise(text: str) -> str:
    return _ALNUM.sub("", text.upper())


def reads(ocr_text: Sequence[str], string: str, threshold: float = 0.75) -> bool:
    """Whether any OCR line holds ``string`` (letters and digits only, case folded) nearly verbatim.

    A string counts as read when some stretch of an OCR line matches it with a similarity ratio of at
    least ``threshold``; strings of fewer than 3 letters and digits are never counted.
    """
    target = normalise(string)
    if len(target) < 3:
        return False
    for line in ocr_text:
        found = normalise(line)
        if not found:
            continue
        if target in found:
            return True
        width = len(target)
        for start in range(max(1, len(found) - width + 1)):
            window = found[start:start + width]
            if difflib.SequenceMatcher(None, window, target).ratio() >= threshold:
                return True
    return False


# Text-free crops of real images (pydicom-data's data_store, pydicom's test files): name -> (package,
# file, (row0, row1, col0, col1) or None for the whole frame, frames kept). The crops leave out the
# text the devices burned in themselves, so every text in a test image is one rendered at a known box.
BASES: dict[str, tuple[str, str, tuple[int, int, int, int] | None, int]] = {
    "us-rgb": ("data_store", "US1_UNCR.dcm", (110, 340, 48, 592), 1),           # GE, RGB
    "us-palette": ("data_store", "OBXXXX1A.dcm", (150, 600, 200, 770), 1),      # Philips, 8-bit palette
    "us-palette16": ("data_store", "gdcm-US-ALOKA-16.dcm", (100, 410, 40, 630), 1),  # 16-bit palette
    "us-grey": ("data_store", "JPGLosslessP14SV1_1s_1f_8b.dcm", (160, 660, 130, 740), 1),  # 8-bit grey
    "us-cine": ("data_store", "color3d_jpeg_baseline.dcm", (60, 360, 100, 500), 2),  # YBR_FULL_422 cine
    "ct": ("data_store", "693_UNCR.dcm", None, 1),                                # 16-bit grey
    "ct-small": ("pydicom", "CT_small.dcm", None, 1),
    "mr": ("data_store", "MR2_UNCR.dcm", (256, 768, 256, 768), 1),              # 12-bit grey
    "cr": ("data_store", "RG3_UNCR.dcm", (200, 712, 300, 812), 1),              # 10-bit MONOCHROME1
    "mr-multiframe": ("data_store", "emri_small.dcm", None, 10),                   # 64 x 64 x 10
}


def base_path(package: str, name: str) -> Path:
    if package == "data_store":
        import data_store

        return Path(data_store.__file__).parent / "data" / name
    import pydicom.data

    return Path(pydicom.data.__file__).parent / "test_files" / name


def load_base(name: str) -> Dataset:
    """A native (Explicit VR Little Endian) copy of a real image, cropped to its text-free part.

    Colour that the original held as YBR comes out RGB; palette colour keeps its indices and LUTs.
    BurnedInAnnotation is removed: the tests say what they put in.
    """
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian

    package, file_name, crop, frames = BASES[name]
    ds = pydicom.dcmread(base_path(package, file_name))
    total = int(ds.get("NumberOfFrames", 1) or 1)
    arrays = [pydicom.pixels.pixel_array(ds, index=i) if total > 1 else ds.pixel_array
              for i in range(min(frames, total))]
    if str(ds.PhotometricInterpretation).startswith("YBR") and ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.PhotometricInterpretation = "RGB"  # pydicom's decoders gave RGB
    stack = np.stack(arrays)
    if crop is not None:
        row0, row1, col0, col1 = crop
        stack = stack[:, row0:row1, col0:col1]
    stack = np.ascontiguousarray(stack)
    ds.Rows, ds.Columns = stack.shape[1:3]
    if len(arrays) > 1 or "NumberOfFrames" in ds:
        ds.NumberOfFrames = len(arrays)
    if ds.SamplesPerPixel > 1:
        ds.PlanarConfiguration = 0
    set_frames(ds, stack)
    ds.pop("BurnedInAnnotation", None)
    ds.pop("LossyImageCompression", None)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def frames_of(ds: Dataset) -> np.ndarray:
    """Every frame of a native dataset, frames x rows x columns [x samples], as stored."""
    import pydicom

    frames = int(ds.get("NumberOfFrames", 1) or 1)
    array = pydicom.pixels.pixel_array(ds, raw=True) if "PixelData" in ds else None
    assert array is not None
    return array.reshape((frames, *array.shape[-3 if ds.SamplesPerPixel > 1 else -2:]))


def set_frames(ds: Dataset, stack: np.ndarray) -> None:
    dtype = np.dtype(f"<{'i' if ds.PixelRepresentation else 'u'}{int(ds.BitsAllocated) // 8}")
    ds.PixelData = np.ascontiguousarray(stack.astype(dtype)).tobytes()


def lut(ds: Dataset) -> np.ndarray:
    """A palette dataset's colours as 8-bit RGB, one row per index (for choosing ink by colour)."""
    from pydicom.pixels import apply_color_lut

    first = int(ds.RedPaletteColorLookupTableDescriptor[1])
    entries = int(ds.RedPaletteColorLookupTableDescriptor[0]) or 65536
    indices = np.arange(first, first + entries, dtype=np.uint16 if ds.BitsAllocated == 16 else np.uint8)
    colours = apply_color_lut(indices, ds).reshape(-1, 3).astype(np.float64)
    if colours.max() > 255:
        colours = colours / 257.0
    return np.rint(colours).astype(np.uint8)


SIZES = (8, 10, 12, 14, 18, 24)
COLOURS = ((255, 255, 255), (255, 255, 0), (0, 255, 0), (0, 200, 255), (160, 160, 160), (90, 90, 90))
GREYS = (1.0, 1.0, 0.0, 0.75, 0.5, 0.3)  # fractions of the frame's range


def _luminance(values: np.ndarray) -> np.ndarray:
    return values @ np.array([0.299, 0.587, 0.114]) if values.ndim and values.shape[-1] == 3 else values


def legible_ink(frame: np.ndarray, box: tuple[int, int, int, int], choices: Sequence[object],
                rng: random.Random, palette: np.ndarray | None, contrast: float = 0.25) -> object | None:
    """An ink from ``choices`` that differs by at least ``contrast`` of the displayed range from the
    frame under ``box`` (from its 5th and its 95th percentile both: a reader makes out every letter),
    or None."""
    row0, col0, row1, col1 = box
    region = frame[row0:row1, col0:col1]
    if palette is not None:
        region = palette[region.astype(np.int64)]
    colour = palette is not None or frame.ndim == 3
    ground = _luminance(region.reshape(-1, 3).astype(np.float64)) if colour else region.reshape(-1)
    dark, bright = (float(v) for v in np.percentile(ground, [5, 95]))
    if colour:
        span, inks = 255.0, [float(_luminance(np.asarray(c, dtype=np.float64))) for c in choices]
    else:
        low, high = float(frame.min()), float(frame.max())
        span, inks = high - low, [low + float(c) * (high - low) for c in choices]  # type: ignore[arg-type]
    candidates = [c for c, ink in zip(choices, inks, strict=True)
                  if ink >= bright + contrast * span or ink <= dark - contrast * span]
    return rng.choice(candidates) if candidates else None


def random_texts(rng: random.Random, frame: np.ndarray, count: int, *, palette: np.ndarray | None = None,
                 sizes: Sequence[int] = SIZES, angles: Sequence[float] = (0, 0, 0, 0, 12, 90),
                 gap: int = 8) -> list[Text]:
    """Up to ``count`` legible texts at random places of ``frame``, ``gap`` pixels apart."""
    rows, columns = frame.shape[:2]
    colour = palette is not None or frame.ndim == 3
    texts: list[Text] = []
    taken: list[tuple[int, int, int, int]] = []
    for _ in range(count * 60):
        if len(texts) == count:
            break
        text = Text(rng.choice(STRINGS), 0, 0, rng.choice(list(sizes)), rng.choice(FONTS),
                    1.0, rng.choice(list(angles)))
        ys, xs = np.nonzero(ink_mask(text, rows + 600, columns + 900) > 24)
        height, width = int(ys.max()) + 1, int(xs.max()) + 1
        if height + 2 * gap >= rows or width + 2 * gap >= columns:
            continue
        row, col = rng.randrange(gap, rows - height - gap), rng.randrange(gap, columns - width - gap)
        box = (row - gap, col - gap, row + height + gap, col + width + gap)
        if any(box[0] < o[2] and o[0] < box[2] and box[1] < o[3] and o[1] < box[3] for o in taken):
            continue
        ink = legible_ink(frame, (row, col, row + height, col + width), COLOURS if colour else GREYS,
                          rng, palette)
        if ink is None:
            continue
        taken.append(box)
        texts.append(dataclasses.replace(text, row=row, col=col, value=ink))  # type: ignore[arg-type]
    return texts


def with_texts(name: str, seed: int, count: int = 6, frames: Sequence[int] = (0,),
               **options: object) -> tuple[Dataset, dict[int, list[Rendered]]]:
    """A base image with random texts burned into ``frames``; the texts of each frame."""
    ds = load_base(name)
    stack = frames_of(ds).copy()
    rng = random.Random(seed)
    palette = lut(ds) if ds.PhotometricInterpretation == "PALETTE COLOR" else None
    out = {}
    for frame in frames:
        texts = random_texts(rng, stack[frame], count, palette=palette, **options)  # type: ignore[arg-type]
        out[frame] = render(stack[frame], texts, lut=palette)
    set_frames(ds, stack)
    return ds, out


def encapsulated(ds: Dataset, codec: str, quality: int = 90) -> Dataset:
    """``ds`` (native) encoded by the test itself: "jpeg" baseline (Pillow, 4:2:2 chroma for colour,
    Photometric Interpretation YBR_FULL_422) or lossless "jpegls" (CharLS through imagecodecs)."""
    import io

    import imagecodecs
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit, JPEGLSLossless

    codestreams = []
    for frame in frames_of(ds):
        if codec == "jpeg":
            buffer = io.BytesIO()
            Image.fromarray(frame).save(buffer, format="JPEG", quality=quality, subsampling=1)
            codestreams.append(buffer.getvalue())
        else:
            codestreams.append(bytes(imagecodecs.jpegls_encode(np.ascontiguousarray(frame))))
    ds.PixelData = encapsulate(codestreams, has_bot=True)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    if codec == "jpeg":
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        if ds.SamplesPerPixel == 3:
            ds.PhotometricInterpretation = "YBR_FULL_422"
        ds.LossyImageCompression = "01"
    else:
        ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    return ds
