"""Compact originals (issue 12): stored-bytes ratio and speed of each codec on real DICOM files.

    .venv/bin/python bench/compact_codecs.py [--jpegxl-effort N] [--per-file]

Files: pydicom's test files, deid-data and pydicom-data (dev dependencies), duplicates dropped, and
pydicom-data's *_UNCI.dcm left out: they are lossy JPEG 2000 decompressed, smooth in the way wavelet
codecs like, not originals as a modality sends them. Native images are the files whose Pixel Data the
frame codecs can take; every other file is stored as whole-file zstd or kept verbatim. Ratio = original
bytes / stored bytes over the whole set (a file kept verbatim counts at its size); MB/s are of original
bytes, one core. zlib level 6 of the whole file is what Orthanc's StorageCompression does; "vs zlib"
divides by its ratio. A codec row encodes every frame with that codec plus zstd of the bytes around the
pixels, the container header included; its encode time leaves out compact()'s reconstruction check, its
decode time is reconstruct(). compact() rows time the whole call, check included; they also keep JPEG
items of encapsulated files in JPEG XL (lossless JPEG recompression) where that is smaller ("jpeg-jxl").
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dicomgw.compact import ALL_CODECS, DEFAULT_CODECS, compact, reconstruct
from dicomgw.compact import codecs as frame_codecs
from dicomgw.compact.locate import locate_pixel_data
from tests.dicomdata import deid_data_files, pydicom_files

MB = 1e6
T = TypeVar("T")


@dataclass
class Tally:
    original: int = 0
    stored: int = 0
    encode_s: float = 0.0
    decode_s: float = 0.0
    chosen: dict[str, int] = field(default_factory=dict)

    def add(self, original: int, stored: int, encode_s: float, decode_s: float, chosen: str = "") -> None:
        self.original += original
        self.stored += stored
        self.encode_s += encode_s
        self.decode_s += decode_s
        if chosen:
            self.chosen[chosen] = self.chosen.get(chosen, 0) + 1

    @property
    def ratio(self) -> float:
        return self.original / self.stored


def files() -> list[Path]:
    import data_store

    paths = [*pydicom_files(), *deid_data_files(),
             *sorted((Path(data_store.__file__).parent / "data").glob("*.dcm"))]
    seen, out = set(), []
    for path in paths:
        digest = hashlib.sha256(path.read_bytes()).digest()
        if digest not in seen and not path.name.endswith("_UNCI.dcm"):
            seen.add(digest)
            out.append(path)
    return out


def timed(function: Callable[[], T]) -> tuple[T, float]:
    started = time.perf_counter()
    result = function()
    return result, time.perf_counter() - started


def encode_seconds(original: bytes, codec: str) -> float:
    """What compact() spends encoding with ``codec`` alone: every frame, and zstd around the pixels."""
    location = locate_pixel_data(original)
    assert location is not None
    view, size = memoryview(original), location.geometry.frame_size
    started = time.perf_counter()
    for i in range(location.geometry.frames):
        start = location.offset + i * size
        frame_codecs.encode_frame(codec, view[start:start + size], location.geometry)
    frame_codecs.zstd_compress(view[:location.offset])
    frame_codecs.zstd_compress(view[location.offset + location.length:])
    return time.perf_counter() - started


Row = tuple[str, int, float, float, str]  # label, stored bytes, encode s, decode s, chosen form


def whole_file_rows(original: bytes) -> list[Row]:
    stored, seconds = timed(lambda: zlib.compress(original, 6))
    _, decode = timed(lambda: zlib.decompress(stored))
    rows: list[Row] = [("zlib-6 (Orthanc)", len(stored), seconds, decode, "")]
    result, seconds = timed(lambda: compact(original, codecs=(), jpeg=False, min_saving=-1.0))
    assert result is not None
    _, decode = timed(lambda: reconstruct(result.data))
    rows.append(("zstd whole file", len(result.data), seconds, decode, ""))
    return rows


def choice_row(label: str, original: bytes, codecs: tuple[str, ...]) -> Row:
    result, seconds = timed(lambda: compact(original, codecs=codecs))
    if result is None:
        return label, len(original), seconds, 0.0, "verbatim"
    _, decode = timed(lambda: reconstruct(result.data))
    return label, len(result.data), seconds, decode, result.codec


def codec_rows(original: bytes) -> list[Row]:
    rows: list[Row] = []
    for codec in ALL_CODECS:
        result = compact(original, codecs=(codec,), min_saving=-1.0)
        assert result is not None and reconstruct(result.data) == original
        _, decode = timed(lambda: reconstruct(result.data))  # noqa: B023
        rows.append((f"{codec} frames + zstd rest", len(result.data), encode_seconds(original, codec), decode,
                     ""))
    return rows


def _short(label: str) -> str:
    if label.startswith("compact()"):
        return "default" if "default" in label else "all"
    return {"zlib-6 (Orthanc)": "zlib", "zstd whole file": "zstd-whole",
            "zstd frames + zstd rest": "zstd-frames"}.get(label, label.split()[0])


def report(title: str, tallies: dict[str, Tally], prefix: str) -> None:
    rows = {k[len(prefix):]: v for k, v in tallies.items() if k.startswith(prefix)}
    if not rows:
        return
    zlib_ratio = rows["zlib-6 (Orthanc)"].ratio
    any_row = next(iter(rows.values()))
    print(f"\n{title}: {any_row.original / MB:.1f} MB original")
    print(f"  {'form':38} {'ratio':>6} {'vs zlib':>7} {'enc MB/s':>9} {'dec MB/s':>9}  chosen")
    for label, tally in rows.items():
        chosen = ", ".join(f"{k} {v}" for k, v in sorted(tally.chosen.items(), key=lambda kv: -kv[1]))
        decode = f"{tally.original / MB / tally.decode_s:9.0f}" if tally.decode_s else f"{'-':>9}"
        print(f"  {label:38} {tally.ratio:6.2f} {tally.ratio / zlib_ratio:7.2f} "
              f"{tally.original / MB / tally.encode_s:9.0f} {decode}  {chosen}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jpegxl-effort", type=int, default=frame_codecs.JPEGXL_EFFORT)
    parser.add_argument("--per-file", action="store_true", help="a line per native image file")
    args = parser.parse_args()
    frame_codecs.JPEGXL_EFFORT = args.jpegxl_effort
    warnings.simplefilter("ignore")
    compact(pydicom_files()[0].read_bytes())  # import and warm every codec library once
    tallies: dict[str, Tally] = {}
    paths = files()
    counts = {"grey": 0, "colour": 0}
    default_label = "compact() default " + "+".join(DEFAULT_CODECS)
    for path in paths:
        original = path.read_bytes()
        rows = [*whole_file_rows(original), choice_row(default_label, original, DEFAULT_CODECS),
                choice_row("compact() all codecs", original, ALL_CODECS)]
        prefixes, native_rows = ["all:"], []
        location = locate_pixel_data(original)
        if location is not None:
            kind = "grey" if location.geometry.samples_per_pixel == 1 else "colour"
            counts[kind] += 1
            prefixes += ["native:", kind + ":"]
            native_rows = [*rows[:2], *codec_rows(original), *rows[2:]]
            if args.per_file:
                print(f"{path.name[:34]:34} {len(original) / MB:6.2f} MB " + "  ".join(
                    f"{_short(label)} {len(original) / stored:.2f}{' ' + chosen if chosen else ''}"
                    for label, stored, _, _, chosen in native_rows))
        for prefix in prefixes:
            for label, stored, encode, decode, chosen in rows if prefix == "all:" else native_rows:
                tallies.setdefault(prefix + label, Tally()).add(len(original), stored, encode, decode, chosen)
    print(f"\n{len(paths)} distinct files, {counts['grey']} grey and {counts['colour']} colour native "
          f"images; JPEG XL effort {args.jpegxl_effort}")
    report("Native images", tallies, "native:")
    report("  of which grey (one sample per pixel)", tallies, "grey:")
    report("  of which colour", tallies, "colour:")
    report("All files (compressed, SR, RT, waveforms too)", tallies, "all:")


if __name__ == "__main__":
    main()
