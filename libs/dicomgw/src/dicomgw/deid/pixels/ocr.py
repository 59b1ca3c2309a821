"""Text in an 8-bit view of a frame: OCR engines behind one small protocol, and what counts as text.

RapidOCR (PP-OCR models on onnxruntime, shipped inside the PyPI wheel: nothing is fetched at run time)
and Tesseract (the Debian binary, driven through its TSV output) both run on the CPU. Each reader's
answer is a list of ``Word`` boxes in the coordinates of the image it was given, whatever scale or turn
it read it at, so readers combine (``Readers``) and other views of the same frame are readers too
(``Turned``, ``Inverted``, ``LeastChannel``). Measured on the test corpus, Tesseract finds a fifth of
the text RapidOCR finds in ultrasound and screen captures: cleaning uses RapidOCR; Tesseract is the
tests' independent check (bench/clean_pixels.py prints the comparison).
"""

from __future__ import annotations

import io
import shutil
import subprocess
import threading
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from PIL import Image

# (row0, col0, row1, col1) in frame pixels, ends exclusive
Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class Word:
    box: Box
    text: str
    confidence: float  # 0..1, as the engine says
    engine: str


class TextReader(Protocol):
    name: str

    def read(self, image: np.ndarray) -> list[Word]:
        """Text in ``image`` (uint8, rows x columns, or rows x columns x 3 RGB)."""
        ...


def alnum_count(text: str) -> int:
    return sum(ch.isalnum() for ch in text)


# What reads as text. The recogniser reads a character into calipers, arrows, speckle and anatomy, so
# a word needs MIN_LETTERS letters or digits (a lone character names nobody) read with MIN_SCORE, in a
# box at least MIN_TEXT_HEIGHT pixels high (smaller is not legible: an 8-pixel font's box is 10 or
# more). The detector also boxes sector edges, round bodies and whole small frames: a box whose short
# side is over MAX_TEXT_HEIGHT pixels or a quarter of the frame's short side (24 pixels are always
# allowed) is text only when read with LARGE_TEXT_SCORE (a title written large is still text).
MIN_LETTERS = 2
MIN_SCORE = 0.5
MIN_TEXT_HEIGHT = 7
MAX_TEXT_HEIGHT = 64
LARGE_TEXT_SCORE = 0.8


def text_like(word: Word, shape: tuple[int, ...], *, min_score: float = MIN_SCORE,
              min_letters: int = MIN_LETTERS) -> bool:
    """Whether ``word`` reads as text in a frame of ``shape`` (see MIN_LETTERS above)."""
    row0, col0, row1, col1 = word.box
    short = min(row1 - row0, col1 - col0)
    if alnum_count(word.text) < min_letters or word.confidence < min_score or short < MIN_TEXT_HEIGHT:
        return False
    return short <= min(MAX_TEXT_HEIGHT, max(24, min(shape[:2]) // 4)) or word.confidence >= LARGE_TEXT_SCORE


def _scaled(image: np.ndarray, scale: float) -> np.ndarray:
    if scale == 1.0:
        return image
    rows, columns = image.shape[:2]
    size = (max(1, round(columns * scale)), max(1, round(rows * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


def _unscaled(box: tuple[float, float, float, float], scale: float, shape: tuple[int, ...]) -> Box:
    row0, col0, row1, col1 = box
    rows, columns = shape[:2]
    return (max(0, int(np.floor(row0 / scale))), max(0, int(np.floor(col0 / scale))),
            min(rows, int(np.ceil(row1 / scale))), min(columns, int(np.ceil(col1 / scale))))


class RapidOcr:
    """PP-OCR text detection and recognition (RapidOCR on onnxruntime, CPU).

    The image is resized so that its shorter side reaches ``target`` pixels (enlarged at most
    ``max_scale`` times; shrunk only to keep its longer side within ``max_side``): small text is found
    in an enlarged image, and the scale is this reader's own, so two readers at two targets are two
    views.
    ``box_thresh`` is the detector's threshold for a text box, ``threads`` onnxruntime's intra-op thread
    count (1: one worker per core). A box much taller than wide (text written vertically) is read again
    turned a quarter each way. Engines are built once per process (a second or two) and shared.
    """

    _engines: dict[int, tuple[Any, threading.Lock]] = {}
    _building = threading.Lock()

    def __init__(self, *, target: int = 736, max_scale: float = 3.0, max_side: int = 2400, threads: int = 1,
                 box_thresh: float = 0.5, name: str = "rapidocr") -> None:
        self.target, self.max_scale, self.max_side = target, max_scale, max_side
        self.threads, self.box_thresh, self.name = threads, box_thresh, name

    def scale_for(self, shape: tuple[int, ...]) -> float:
        short, long = sorted(shape[:2])
        scale = min(self.max_scale, max(1.0, self.target / max(1, short)))
        return max(min(scale, self.max_side / max(1, long)), min(1.0, self.max_side / max(1, long)))

    def _engine(self) -> tuple[Any, threading.Lock]:
        key = self.threads
        with self._building:
            if key not in self._engines:
                from rapidocr import RapidOCR

                engine = RapidOCR(params={
                    "Global.log_level": "error",
                    "Global.text_score": 0.0,  # every recognised box: the caller judges what is text
                    "Global.max_side_len": 100_000,  # the scale is chosen here (scale_for), not there
                    "Det.limit_side_len": 100_000,
                    "Det.limit_type": "max",
                    "EngineConfig.onnxruntime.intra_op_num_threads": self.threads,
                    "EngineConfig.onnxruntime.inter_op_num_threads": 1,
                })
                self._engines[key] = (engine, threading.Lock())  # calls set options on the engine
            return self._engines[key]

    def read(self, image: np.ndarray) -> list[Word]:
        scale = self.scale_for(image.shape)
        view = _scaled(image, scale)
        bgr = np.ascontiguousarray(view[..., ::-1] if view.ndim == 3 else np.stack([view] * 3, axis=-1))
        engine, lock = self._engine()
        with lock:
            result = engine(bgr, use_det=True, use_cls=True, use_rec=True, text_score=0.0,
                            box_thresh=self.box_thresh)
            boxes = getattr(result, "boxes", None)
            texts = getattr(result, "txts", None)
            scores = getattr(result, "scores", None)
            if boxes is None or texts is None or scores is None:
                return []
            words = []
            for quad, text, score in zip(boxes, texts, scores, strict=True):
                points = np.asarray(quad, dtype=np.float64)
                bounds = (points[:, 1].min(), points[:, 0].min(),
                          points[:, 1].max() + 1, points[:, 0].max() + 1)
                text, score = self._vertical(engine, bgr, bounds, str(text), float(score))
                words.append(Word(_unscaled(bounds, scale, image.shape), text, score, self.name))
        return words

    @staticmethod
    def _vertical(engine: Any, bgr: np.ndarray, bounds: tuple[float, float, float, float], text: str,
                  score: float) -> tuple[str, float]:
        row0, col0, row1, col1 = (max(0, int(v)) for v in bounds)
        if row1 - row0 < 2 * (col1 - col0) or score >= 0.9:
            return text, score
        crop = bgr[row0:row1, col0:col1]
        for turns in (1, 3):
            turned = engine(np.ascontiguousarray(np.rot90(crop, turns)), use_det=False, use_cls=False,
                            use_rec=True, text_score=0.0)
            for other, other_score in zip(turned.txts or (), turned.scores or (), strict=False):
                if float(other_score) > score and str(other).strip():
                    text, score = str(other), float(other_score)
        return text, score


class Turned:
    """Another reader's words in the image turned a quarter counter-clockwise (``turns`` times): text
    written vertically reads as lines there. Boxes come back in the image's own coordinates."""

    def __init__(self, reader: TextReader, turns: int = 1) -> None:
        self.reader, self.turns = reader, turns % 4
        self.name = f"{reader.name}-turned{90 * self.turns}"

    def read(self, image: np.ndarray) -> list[Word]:
        rows, columns = image.shape[:2]
        words = self.reader.read(np.ascontiguousarray(np.rot90(image, self.turns)))
        return [Word(_unturned(w.box, self.turns, rows, columns), w.text, w.confidence, self.name)
                for w in words]


def _unturned(box: Box, turns: int, rows: int, columns: int) -> Box:
    """A box of ``np.rot90(image, turns)`` in the coordinates of ``image`` (rows x columns)."""
    for done in range(turns % 4, 0, -1):  # undo one quarter turn at a time
        row0, col0, row1, col1 = box
        # turned once more: turned[i, j] = before[j, width - 1 - i], `before` being `done - 1` turns in
        width = columns if (done - 1) % 2 == 0 else rows
        box = (col0, width - row1, col1, width - row0)
    return box


class Inverted:
    """Another reader's words in the negative of the image (light text on dark reads as dark on light:
    another input to the same models, as good at finding text, measured on the test corpus)."""

    def __init__(self, reader: TextReader) -> None:
        self.reader, self.name = reader, f"{reader.name}-inverted"

    def read(self, image: np.ndarray) -> list[Word]:
        return [Word(w.box, w.text, w.confidence, self.name) for w in self.reader.read(255 - image)]


class LeastChannel:
    """Another reader's words in the least of a colour image's three samples (grey images: none).

    White text over colour Doppler or a coloured plate has little contrast in RGB as the models see it
    (white on yellow), and much in its least channel, where saturated colour goes dark and white stays.
    """

    def __init__(self, reader: TextReader) -> None:
        self.reader, self.name = reader, f"{reader.name}-least-channel"

    def read(self, image: np.ndarray) -> list[Word]:
        if image.ndim != 3:
            return []
        words = self.reader.read(np.ascontiguousarray(image.min(axis=2)))
        return [Word(w.box, w.text, w.confidence, self.name) for w in words]


class Readers:
    """Several readers' words together (one more pass finds what another one missed)."""

    def __init__(self, *readers: TextReader) -> None:
        self.readers = readers
        self.name = "+".join(r.name for r in readers)

    def read(self, image: np.ndarray) -> list[Word]:
        return [word for reader in self.readers for word in reader.read(image)]


class Tesseract:
    """Tesseract (Debian's tesseract-ocr) words with their confidence, from its TSV output.

    ``psm`` 11 finds sparse text anywhere in the image, the way burned-in annotations lie.
    """

    def __init__(self, *, scale: float = 1.0, psm: int = 11, binary: str = "tesseract",
                 language: str = "eng", timeout: float = 120.0, name: str = "tesseract") -> None:
        self.scale, self.psm, self.binary, self.language, self.timeout = scale, psm, binary, language, timeout
        self.name = name

    @staticmethod
    def available(binary: str = "tesseract") -> bool:
        return shutil.which(binary) is not None

    def read(self, image: np.ndarray) -> list[Word]:
        view = _scaled(image, self.scale)
        png = io.BytesIO()
        Image.fromarray(view).save(png, format="PNG", compress_level=1)
        done = subprocess.run(
            [self.binary, "stdin", "stdout", "--psm", str(self.psm), "-l", self.language, "tsv"],
            input=png.getvalue(), capture_output=True, timeout=self.timeout, check=False,
            env={"OMP_THREAD_LIMIT": "1", "PATH": "/usr/bin:/bin:/usr/local/bin"},
        )
        if done.returncode != 0:
            raise RuntimeError(f"tesseract failed ({done.returncode}): {done.stderr[-300:]!r}")
        words = []
        for line in done.stdout.decode("utf-8", "replace").splitlines()[1:]:
            fields = line.split("\t")
            if len(fields) < 12 or fields[0] != "5":
                continue
            text = fields[11].strip()
            if not text:
                continue
            left, top, width, height = (int(v) for v in fields[6:10])
            bounds = (float(top), float(left), float(top + height), float(left + width))
            words.append(Word(_unscaled(bounds, self.scale, image.shape), text,
                              max(0.0, float(fields[10])) / 100.0, self.name))
        return words
