"""``share review NAME``: the images Clean Pixel Data passed, drawn with their redaction boxes.

For a research data manager checking a version before it is published (or after): each cleaned image
is fetched as it will be published (the admin API serves the held copy), its frames with boxes are
rendered as the cleaner's reader saw them, every box outlined, into PNG thumbnails and one
``index.html`` to open in a browser; the terminal lists the paths. ``--sample N`` draws a seeded random
sample (a review of a few hundred ultrasound images is done on a sample, then on what it finds).
"""

from __future__ import annotations

import argparse
import html
import io
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from PIL import Image, ImageDraw
from pydicom.dataset import Dataset
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.processing import apply_color_lut, convert_color_space
from pydicom.uid import UID

from dicomgw_client.admin import Gateway
from dicomgw_client.errors import ClientError

THUMBNAIL = 512  # longer side, pixels
OUTLINE = (255, 40, 40)
WHOLE = (255, 160, 0)
HELP = "the cleaned images of a version, with their redaction boxes"


def add_review_arguments(review: argparse.ArgumentParser) -> None:
    """The arguments of a review, but the connection's (``--url``, ``--token``)."""
    review.add_argument("name")
    review.add_argument("--version", type=int, default=None, help="default: the latest version")
    review.add_argument("--out", type=Path, default=None,
                        help="folder for the thumbnails and index.html (default: ./review-NAME-vN)")
    review.add_argument("--sample", type=int, default=0, help="review N images drawn at random (0: all)")
    review.add_argument("--seed", type=int, default=0, help="the sample's seed")
    review.add_argument("--frames", type=int, default=4, help="at most this many frames drawn per image")
    review.add_argument("--json", action="store_true", help="list the images and boxes as JSON, no drawing")


def latest_version(gateway: Gateway, name: str) -> int:
    versions = gateway.admin("GET", f"collections/{name}")["versions"]
    if not versions:
        raise ClientError(f"the collection {name} has no version yet")
    return int(versions[-1]["version"])


# ---- a frame as the cleaner's reader sees it ----------------------------------------------------------
def to_uint8(array: np.ndarray) -> np.ndarray:
    """``array`` stretched linearly from its minimum to its maximum onto 0..255."""
    if array.dtype == np.uint8:
        return array
    data = array.astype(np.float64)
    low, high = float(data.min()), float(data.max())
    if high <= low:
        return np.zeros(array.shape, dtype=np.uint8)
    return np.rint((data - low) * (255.0 / (high - low))).astype(np.uint8)


def colour_uint8(frame: np.ndarray) -> np.ndarray:
    """RGB samples of any width as 8-bit RGB (scaled from zero: colour keeps its balance)."""
    if frame.dtype == np.uint8:
        return frame
    high = float(frame.max())
    if high <= 0:
        return np.zeros(frame.shape, dtype=np.uint8)
    return np.rint(frame.astype(np.float64) * (255.0 / high)).astype(np.uint8)


def render(ds: Dataset, frame: int) -> np.ndarray:
    """One frame of ``ds`` in 8 bits, grey or RGB rows x columns x 3: grey stretched from its minimum
    to its maximum (MONOCHROME1 inverted, as it displays), palette colour through its lookup table, YBR
    as RGB. pydicom's decoders (the pylibjpeg plugins) give the stored values."""
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        raise ClientError("no transfer syntax in the file meta information")
    try:
        values, info = get_decoder(UID(str(meta.TransferSyntaxUID))).as_array(ds, index=frame)
    except Exception as exc:  # any decoder's failure, said in one line
        raise ClientError(f"pixel data could not be decoded: {type(exc).__name__}: {exc}") from exc
    photometric = str(info.get("photometric_interpretation", ds.get("PhotometricInterpretation", "")))
    if photometric == "PALETTE COLOR":
        colours = apply_color_lut(values, ds)
        if int(colours.max(initial=0)) > 255:  # 16-bit entries
            colours = colours >> 8
        return colours.astype(np.uint8)
    if values.ndim == 2:
        grey = to_uint8(values)
        return 255 - grey if photometric == "MONOCHROME1" else grey
    if photometric.startswith("YBR"):
        values = convert_color_space(values, "YBR_FULL", "RGB")
    return colour_uint8(values)


def draw(image: np.ndarray, boxes: list[list[int]], whole: bool) -> Image.Image:
    """The frame with every box outlined (a whole frame blanked gets an outline of its own), shrunk."""
    picture = Image.fromarray(image).convert("RGB")
    pen = ImageDraw.Draw(picture)
    width = max(1, round(max(picture.size) / THUMBNAIL))
    if whole:
        pen.rectangle((0, 0, picture.width - 1, picture.height - 1), outline=WHOLE, width=3 * width)
    for row0, col0, row1, col1 in boxes:
        pen.rectangle((col0, row0, col1 - 1, row1 - 1), outline=OUTLINE, width=width)
    picture.thumbnail((THUMBNAIL, THUMBNAIL))
    return picture


# ---- the command ---------------------------------------------------------------------------------------
def run(args: argparse.Namespace, prog: str) -> int:
    """Review as ``args`` say (``add_review_arguments`` and ``--url``/``--token``); the exit status."""
    with Gateway(args.url, args.token, timeout=300) as gateway:
        version = args.version or latest_version(gateway, args.name)
        listing = gateway.admin("GET", f"collections/{args.name}/versions/{version}/cleaned")
        images: list[dict[str, Any]] = listing["images"]
        state = next(v for v in gateway.admin("GET", f"collections/{args.name}")["versions"]
                     if v["version"] == version)["state"]
        if args.sample and args.sample < len(images):
            images = sorted(random.Random(args.seed).sample(images, args.sample),
                            key=lambda i: i["SOPInstanceUID"])
        if args.json:
            print(json.dumps({"collection": args.name, "version": version, "state": state,
                              "images": images}, indent=2))
            return 0
        out = args.out or Path(f"review-{args.name}-v{version}")
        out.mkdir(parents=True, exist_ok=True)
        rows: list[str] = []
        redacted = 0
        for image in images:
            uid = image["SOPInstanceUID"]
            data = gateway.admin_bytes(f"collections/{args.name}/versions/{version}/cleaned/{uid}")
            ds = pydicom.dcmread(io.BytesIO(data))
            boxes = {int(f): b for f, b in image["boxes"].items()}
            whole = set(image["wholeFrames"])
            frames = sorted(set(boxes) | whole) or [0]
            redacted += bool(boxes or whole)
            paths = []
            for frame in frames[:args.frames]:
                picture = draw(render(ds, frame), boxes.get(frame, []), frame in whole)
                path = out / f"{uid}_f{frame}.png"
                picture.save(path)
                paths.append(path)
            count = sum(len(b) for b in boxes.values())
            what = (f"{count} boxes" + (f", {len(whole)} whole frames" if whole else "")
                    if boxes or whole else "no text found")
            print(f"{image['modality'] or '?':<3} {uid}  {what}  " + " ".join(str(p) for p in paths))
            cells = "".join(f'<a href="{html.escape(p.name)}"><img src="{html.escape(p.name)}"></a>'
                            for p in paths)
            rows.append(f"<tr><td><code>{html.escape(uid)}</code><br>{html.escape(image['modality'] or '')} "
                        f"{image['rows']}&times;{image['columns']}, {image['frames']} frame(s)<br>"
                        f"{html.escape(what)}<br>state: {html.escape(image['state'])}</td>"
                        f"<td>{cells}</td></tr>")
        title = f"{html.escape(args.name)} v{version} review"
        page = (f"<!doctype html><meta charset=utf-8><title>{title}</title>"
                "<style>body{font-family:sans-serif}img{max-width:512px;margin:2px;border:1px solid #888}"
                "td{vertical-align:top;padding:6px}</style>"
                f"<h1>{html.escape(args.name)}, version {version} ({html.escape(state)})</h1>"
                f"<p>{len(images)} cleaned images shown; red: redacted boxes; orange frame: a whole frame "
                f"blanked by a device rule. Publish with <code>{html.escape(prog)} share publish "
                f"{html.escape(args.name)} --version {version} [--reject UID ...]</code>.</p>"
                f"<table>{''.join(rows)}</table>")
        (out / "index.html").write_text(page)
        print(f"{len(images)} images ({redacted} with text redacted, "
              f"{len(images) - redacted} with none found); version {version} is {state}; "
              f"open {out / 'index.html'}")
        if state == "review":
            print(f"publish: {prog} share publish {args.name} --version {version} [--reject UID ...]")
    return 0
