"""``dicomgw share review NAME``: the images Clean Pixel Data passed, drawn with their redaction boxes.

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

from dicomgw_gateway.adminclient import Gateway

THUMBNAIL = 512  # longer side, pixels
OUTLINE = (255, 40, 40)
WHOLE = (255, 160, 0)


def add_parser(actions: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    review = actions.add_parser("review", help="the cleaned images of a version, with their redaction boxes",
                                description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    review.add_argument("name")
    review.add_argument("--version", type=int, default=None, help="default: the latest version")
    review.add_argument("--out", type=Path, default=None,
                        help="folder for the thumbnails and index.html (default: ./review-NAME-vN)")
    review.add_argument("--sample", type=int, default=0, help="review N images drawn at random (0: all)")
    review.add_argument("--seed", type=int, default=0, help="the sample's seed")
    review.add_argument("--frames", type=int, default=4, help="at most this many frames drawn per image")
    review.add_argument("--json", action="store_true", help="list the images and boxes as JSON, no drawing")
    return review


def latest_version(gateway: Gateway, name: str) -> int:
    versions = gateway.admin("GET", f"collections/{name}")["versions"]
    if not versions:
        raise SystemExit(f"dicomgw: the collection {name} has no version yet")
    return int(versions[-1]["version"])


def frame_image(data: bytes, frame: int) -> np.ndarray:
    """One frame of a DICOM file as the cleaner's reader sees it (8-bit grey or RGB)."""
    from dicomgw.deid.pixels import codecs
    from dicomgw.deid.pixels.views import palette_table, view

    ds = pydicom.dcmread(io.BytesIO(data))
    decoded = codecs.decode(ds)
    table = palette_table(ds) if decoded.indices else None
    return view(decoded.values[frame], decoded.photometric, table)


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


def run(args: argparse.Namespace) -> int:
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
            data = gateway.client.get(
                f"{gateway.origin}/admin/collections/{args.name}/versions/{version}/cleaned/{uid}")
            data.raise_for_status()
            boxes = {int(f): b for f, b in image["boxes"].items()}
            whole = set(image["wholeFrames"])
            frames = sorted(set(boxes) | whole) or [0]
            redacted += bool(boxes or whole)
            paths = []
            for frame in frames[:args.frames]:
                picture = draw(frame_image(data.content, frame), boxes.get(frame, []), frame in whole)
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
                "blanked by a device rule. Publish with <code>dicomgw share publish "
                f"{html.escape(args.name)} --version {version} [--reject UID ...]</code>.</p>"
                f"<table>{''.join(rows)}</table>")
        (out / "index.html").write_text(page)
        print(f"{len(images)} images ({redacted} with text redacted, "
              f"{len(images) - redacted} with none found); version {version} is {state}; "
              f"open {out / 'index.html'}")
        if state == "review":
            print(f"publish: dicomgw share publish {args.name} --version {version} [--reject UID ...]")
    return 0
