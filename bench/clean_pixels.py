"""Clean Pixel Data (issue 16): which OCR finds the burned-in text, and what cleaning costs per core.

    .venv/bin/python bench/clean_pixels.py [--only ocr,throughput] [--seeds N] [--all]

``ocr``: text rendered into real ultrasound (GE RGB, Philips palette, ALOKA 16-bit palette, Philips
grey, SonoSite cine) and secondary-capture-like images (a CT and an MR as a viewer's RGB screenshot) at
known boxes (tests/textimages.py: several fonts, 8 to 24 pixels, contrasts, some turned 12 or 90
degrees), read by each engine: the share of the rendered strings it *found* (95 % of the ink inside
its boxes once padded as the redaction pads them) and *read* (recognised nearly verbatim), its false
boxes on text-free parts, and its seconds per image on one core.

``throughput``: real files of pydicom's and pydicom-data's test sets, grouped by modality, through
``deidentify`` alone (what a collection does without the option) and through ``deidentify`` then
``clean_pixels`` (with it); images per CPU second on one core (onnxruntime on one thread), the ratio
of the two, and what became of each image (clean, excluded and why, untouched). ``--all`` adds the
120-frame SonoSite cine (about 10 minutes alone).

``collection``: the same files, each in a study of its own, in the embedded gateway; per modality a
research collection built by its worker with ``--profile basic`` and with ``basic,clean-pixels`` (no
review hold), images per second of wall time and CPU seconds of the gateway process per image, and the
ratio. Without the option the burned-in candidates are left out (no pixel work at all): the ratio is
what keeping them costs.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dicomgw.deid import deidentify  # noqa: E402
from dicomgw.deid.pixels import (  # noqa: E402
    Device,
    RapidOcr,
    Readers,
    Tesseract,
    Word,
    candidate,
    clean_pixels,
    finder_reader,
    text_like,
)
from dicomgw.deid.pixels import codecs as pixel_codecs  # noqa: E402
from dicomgw.deid.pixels.redact import pad  # noqa: E402
from dicomgw.deid.pixels.views import palette_table, view  # noqa: E402
from tests.textimages import (  # noqa: E402
    Rendered,
    base_path,
    ink_mask,
    load_base,
    random_texts,
    reads,
    render,
    set_frames,
    with_texts,
)

KEY = b"bench-collection-key"
US = ("us-rgb", "us-palette", "us-palette16", "us-grey", "us-cine")
SC = ("sc-ct", "sc-mr")


# ---- the OCR comparison ---------------------------------------------------------------------------

class GreyNegative:
    """Tesseract as it reads light text on dark best (measured): the negative of the grey view."""

    def __init__(self, reader: Tesseract) -> None:
        self.reader, self.name = reader, reader.name

    def read(self, image: np.ndarray) -> list[Word]:
        grey = image if image.ndim == 2 else np.asarray(Image.fromarray(image).convert("L"))
        return self.reader.read(255 - grey)


def screenshot(name: str) -> Dataset:
    """A grey base shown as a viewer shows it and captured as 8-bit RGB (a secondary capture)."""
    ds = load_base(name.removeprefix("sc-"))
    frame = pixel_codecs.decode(ds).values[0]
    grey = view(frame, str(ds.PhotometricInterpretation))
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.SOPClassUID, ds.Modality = "1.2.840.10008.5.1.4.1.1.7", "OT"
    for keyword in ("RescaleIntercept", "RescaleSlope", "WindowCenter", "WindowWidth", "PixelPaddingValue"):
        ds.pop(keyword, None)
    set_frames(ds, np.stack([grey] * 3, axis=-1)[None])
    return ds


def corpus_case(name: str, seed: int) -> tuple[np.ndarray, list[Rendered]]:
    """An 8-bit view of a base image with six texts burned in, and the texts."""
    if name.startswith("sc-"):
        frame = pixel_codecs.decode(screenshot(name)).values[0].copy()
        return frame, render(frame, random_texts(random.Random(seed), frame, 6))
    ds, by_frame = with_texts(name, seed)
    decoded = pixel_codecs.decode(ds)
    table = palette_table(ds) if decoded.indices else None
    return view(decoded.values[0], decoded.photometric, table), by_frame[0]


def found(rendered: Rendered, words: Sequence[Word], shape: tuple[int, ...]) -> bool:
    ink = ink_mask(rendered.text, *shape[:2]) > 64
    covered = np.zeros(shape[:2], dtype=bool)
    for word in words:
        row0, col0, row1, col1 = pad(word.box, shape)
        covered[row0:row1, col0:col1] = True
    return bool(covered[ink].mean() >= 0.95)


def compare_ocr(seeds: int) -> dict[str, dict[str, dict[str, float]]]:
    finder = finder_reader()
    tesseract = GreyNegative(Tesseract(scale=2.0, name="tesseract"))
    engines: dict[str, object] = {
        "RapidOCR, one view (1024)": RapidOcr(target=1024, box_thresh=0.3),
        "RapidOCR, the finder (3 views)": finder,
        "Tesseract psm 11 (as is)": Tesseract(),
        "Tesseract psm 11 (negative, 2x)": tesseract,
        "finder + Tesseract": Readers(finder, tesseract),
    }
    out: dict[str, dict[str, dict[str, float]]] = {}
    for group, names in (("ultrasound", US), ("secondary capture", SC)):
        cases = [corpus_case(name, seed) for name in names for seed in range(seeds)]
        for label, engine in engines.items():
            strings = hit = read = false = 0
            seconds = 0.0
            for image, rendered in cases:
                started = cpu()
                words = [w for w in engine.read(image) if text_like(w, image.shape)]  # type: ignore[attr-defined]
                seconds += cpu() - started
                strings += len(rendered)
                hit += sum(found(r, words, image.shape) for r in rendered)
                read += sum(reads([w.text for w in words], r.text.string) for r in rendered)
                false += sum(1 for w in words if not any(_near(w.box, r.box) for r in rendered))
            out.setdefault(group, {})[label] = {
                "strings": strings, "found": hit / strings, "read": read / strings,
                "false_boxes_per_image": false / len(cases), "seconds_per_image": seconds / len(cases)}
    return out


def _near(a: tuple[int, int, int, int], b: tuple[int, int, int, int], margin: int = 6) -> bool:
    return a[0] < b[2] + margin and b[0] - margin < a[2] and a[1] < b[3] + margin and b[1] - margin < a[3]


def ocr_table(result: dict[str, dict[str, dict[str, float]]]) -> str:
    lines = []
    for group, rows in result.items():
        lines += [f"{group}: {next(iter(rows.values()))['strings']:.0f} rendered strings", "",
                  "| engine | found | read | false boxes / image | s / image (1 core) |",
                  "| --- | --- | --- | --- | --- |"]
        lines += [f"| {label} | {r['found']:.0%} | {r['read']:.0%} | {r['false_boxes_per_image']:.1f} "
                  f"| {r['seconds_per_image']:.2f} |" for label, r in rows.items()]
        lines.append("")
    return "\n".join(lines)


# ---- throughput by modality -------------------------------------------------------------------------

FILES: dict[str, list[tuple[str, str]]] = {
    "US": [("data_store", n) for n in ("US1_UNCR.dcm", "US1_J2KR.dcm", "US1_J2KI.dcm", "OBXXXX1A.dcm",
                                         "OBXXXX1A_rle.dcm", "gdcm-US-ALOKA-16.dcm",
                                         "JPGLosslessP14SV1_1s_1f_8b.dcm", "color-px.dcm")]
    + [("pydicom", n) for n in ("examples_rgb_color.dcm", "examples_palette.dcm", "examples_jpeg2k.dcm",
                                 "examples_ybr_color.dcm")],
    "SC/OT": [("pydicom", n) for n in ("GDCMJ2K_TextGBR.dcm", "SC_jpeg_no_color_transform.dcm",
                                        "SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_rle.dcm",
                                        "SC_ybr_full_422_uncompressed.dcm")]
    + [("data_store", n) for n in ("SC_rgb.dcm", "vlut_04.dcm", "mlut_18.dcm")],
    "CR": [("data_store", n) for n in ("RG3_UNCR.dcm", "RG3_J2KI.dcm", "RG1_J2KR.dcm")],
    "CT": [("data_store", "693_UNCR.dcm"), ("pydicom", "CT_small.dcm"), ("data_store", "693_J2KR.dcm")],
    "MR": [("data_store", "MR2_UNCR.dcm"), ("pydicom", "MR_small.dcm"), ("data_store", "emri_small.dcm")],
}
ALL_ONLY = {"US": [("data_store", "color3d_jpeg_baseline.dcm")]}


def cpu() -> float:
    """CPU seconds of this process and of its finished children (Tesseract runs as a child)."""
    times = os.times()
    return time.process_time() + times.children_user + times.children_system


def cpu_seconds(function: Callable[[], object], repeat: int = 1) -> float:
    started = cpu()
    for _ in range(repeat):
        function()
    return (cpu() - started) / repeat


def throughput(include_all: bool) -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {}
    for modality, files in FILES.items():
        files = files + (ALL_ONLY.get(modality, []) if include_all else [])
        deid_s = clean_s = 0.0
        outcomes: Counter[str] = Counter()
        frames = 0
        for package, name in files:
            original = pydicom.dcmread(base_path(package, name))
            frames += int(original.get("NumberOfFrames", 1) or 1)
            deidentify(original, KEY)  # pydicom parses elements on first access: both arms start warm
            deid_s += cpu_seconds(lambda original=original: deidentify(original, KEY), repeat=5)

            def both(original: Dataset = original) -> str:
                copy = deidentify(original, KEY)
                result = clean_pixels(copy, device=Device.of(original))
                return result.status + (f": {result.reasons[0][:70]}" if result.reasons else "")

            started = cpu()
            outcome = both()
            spent = cpu() - started
            if spent < 0.5:  # no OCR ran: time it as often as de-identification alone
                spent = cpu_seconds(both, repeat=5)
            clean_s += spent
            outcomes[f"{name}: {outcome}"] += 1
            print(f"  {modality} {name}: {outcome} ({spent:.1f} s CPU, candidate={candidate(original)})",
                  flush=True)
        n = len(files)
        out[modality] = {"images": n, "frames": frames, "deidentify_per_s": n / deid_s,
                         "clean_per_s": n / clean_s, "ratio": deid_s / clean_s,
                         "outcomes": sorted(outcomes)}
    return out


def throughput_table(result: dict[str, dict[str, object]]) -> str:
    lines = ["| modality | images (frames) | de-identify alone, images/s/core "
             "| with clean-pixels, images/s/core | CPU s/image | ratio |",
             "| --- | --- | --- | --- | --- | --- |"]
    for modality, r in result.items():
        lines.append(f"| {modality} | {r['images']} ({r['frames']}) | {r['deidentify_per_s']:.0f} | "
                     f"{r['clean_per_s']:.3g} | {1 / r['clean_per_s']:.3g} | {r['ratio']:.2g} |")  # type: ignore[operator]
    return "\n".join(lines)


def _gateway_cpu(pid: int) -> float:
    """CPU seconds of the gateway process so far (its own and its threads')."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def collection(tmp: Path) -> dict[str, dict[str, object]]:
    import httpx
    from pydicom.uid import generate_uid

    from tests.dicomdata import multipart_related
    from tests.fixtures.gateway import start_gateway

    gateway = start_gateway(tmp / "gateway", {})
    out: dict[str, dict[str, object]] = {}
    try:
        admin = f"{gateway.root}/admin"
        for modality, files in FILES.items():
            parts = []
            for package, name in files:
                ds = pydicom.dcmread(base_path(package, name))
                ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
                ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
                ds.Modality = ds.get("Modality") or "OT"
                ds.StudyDescription = f"bench {modality}"
                buffer = io.BytesIO()
                ds.save_as(buffer, enforce_file_format=True)
                parts.append(buffer.getvalue())
            source = "bench-" + modality.lower().replace("/", "-")
            httpx.post(f"{admin}/partitions", json={"name": source}, timeout=60).raise_for_status()
            body, content_type = multipart_related(parts)
            httpx.post(f"{gateway.url}/partitions/{source}/studies", content=body, timeout=300,
                       headers={"content-type": content_type}).raise_for_status()
            figures: dict[str, object] = {"images": len(parts)}
            for profile in ("basic", "basic,clean-pixels"):
                name = f"{source}-{'clean' if 'clean' in profile else 'plain'}"
                cpu0, wall0 = _gateway_cpu(gateway.process.pid), time.perf_counter()
                httpx.post(f"{admin}/collections", timeout=60, json={
                    "name": name, "source": source, "profile": profile, "review": False}).raise_for_status()
                while True:
                    [version] = httpx.get(f"{admin}/collections/{name}", timeout=60).json()["versions"]
                    if version["state"] in ("complete", "failed"):
                        break
                    time.sleep(0.5)
                wall, spent = time.perf_counter() - wall0, _gateway_cpu(gateway.process.pid) - cpu0
                key = "clean" if "clean" in profile else "plain"
                figures[f"{key}_images_per_s"] = len(parts) / wall
                figures[f"{key}_cpu_s_per_image"] = spent / len(parts)
                figures[f"{key}_published"] = version["instances"]
                print(f"  {modality} {profile}: {version['instances']} published, {version['excluded']} left "
                      f"out, {wall:.1f} s wall, {spent:.1f} s CPU", flush=True)
            figures["ratio"] = figures["clean_images_per_s"] / figures["plain_images_per_s"]  # type: ignore[operator]
            out[modality] = figures
    finally:
        gateway.stop()
    return out


def collection_table(result: dict[str, dict[str, object]]) -> str:
    lines = ["| modality | images | basic: published, images/s | basic,clean-pixels: published, images/s, "
             "CPU s/image | ratio |", "| --- | --- | --- | --- | --- |"]
    for modality, r in result.items():
        lines.append(f"| {modality} | {r['images']} | {r['plain_published']}, "
                     f"{r['plain_images_per_s']:.3g} | {r['clean_published']}, "
                     f"{r['clean_images_per_s']:.3g}, {r['clean_cpu_s_per_image']:.3g} | {r['ratio']:.2g} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="ocr,throughput,collection")
    parser.add_argument("--seeds", type=int, default=3, help="rendered images per base image")
    parser.add_argument("--all", action="store_true", help="add the 120-frame cine")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    wanted = set(args.only.split(","))
    started = time.perf_counter()
    if "ocr" in wanted:
        print(ocr_table(compare_ocr(args.seeds)), flush=True)
    if "throughput" in wanted:
        result = throughput(args.all)
        print(throughput_table(result))
        statuses = Counter(o.split(": ")[1].split(":")[0] for r in result.values() for o in r["outcomes"])  # type: ignore[attr-defined]
        print(f"\noutcomes: {dict(statuses)}")
        excluded = [o for r in result.values() for o in r["outcomes"] if ": excluded" in o]  # type: ignore[attr-defined]
        for line in excluded:
            print(f"  {line}")
    if "collection" in wanted:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="dicomgw-pixels-") as tmp:
            print(collection_table(collection(Path(tmp))))
    print(f"\n({time.perf_counter() - started:.0f} s wall)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
