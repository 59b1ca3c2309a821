"""Clean Pixel Data in a research collection, end to end, as a research data manager runs it.

Ultrasound images with names, IDs and dates burned into their real pixels (tests/textimages.py), one
without text, one whose pixels cannot be decoded and a CT go into a partition; `dicomgw share create
--profile basic,clean-pixels` holds what it cleaned for review (nothing of it visible in the collection's
partition), `dicomgw share review` draws the boxes, `dicomgw share publish --reject` stores the rest.
What is published reads no rendered string to an independent OCR (Tesseract), says BurnedInAnnotation NO
and 113101; the report counts cleaned, checked, excluded and rejected images, and `redactions.csv` lists
every box. Without review the same build publishes at once.
"""

from __future__ import annotations

import csv
import io
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from dicomgw.deid.pixels import CLEAN_PIXEL_DATA, Tesseract
from dicomgw.deid.pixels import codecs as pixel_codecs
from dicomgw.deid.pixels.views import palette_table, view
from tests.dicomdata import make_dataset, to_bytes
from tests.integration.test_collections import Archive, _archive
from tests.textimages import Rendered, Text, encapsulated, frames_of, load_base, reads, render, set_frames

pytestmark = pytest.mark.timeout(900)
NAME = "DOE^JANE"
STRINGS = ("DOE JANE", "PID 4711-0815", "12/03/1968")


def _identified(ds: Dataset, study: str) -> Dataset:
    """The test image as a hospital's: its own UIDs, a patient, and text burned where modalities put it."""
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality = NAME, "PID-4711-0815", "US"
    ds.StudyDate = "20240315"
    return ds


def _with_strings(base: str, study: str) -> tuple[Dataset, list[Rendered]]:
    ds = load_base(base)
    stack = frames_of(ds).copy()
    texts = [Text(s, 12 + 26 * i, 14, size=18) for i, s in enumerate(STRINGS)]
    rendered = render(stack[0], texts)
    set_frames(ds, stack)
    return _identified(ds, study), rendered


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    archive = _archive(tmp_path_factory.mktemp("clean-pixels"))
    yield archive
    archive.gateway.stop()


@pytest.fixture(scope="module")
def burned(archive: Archive) -> dict[str, Any]:
    """A partition with two ultrasound images with text, one without, one undecodable, and a CT."""
    assert archive.cli("partitions", "create", "burned").returncode == 0
    study = generate_uid()
    grey, grey_texts = _with_strings("us-grey", study)
    rgb, _ = _with_strings("us-rgb", study)
    plain = _identified(load_base("us-grey"), study)
    broken = _identified(encapsulated(load_base("us-cine"), "jpeg"), study)
    data = bytearray(broken.PixelData)
    scan = data.index(b"\xff\xda")
    data[scan + 20:] = bytes(len(data) - scan - 20)  # the scan is gone: nothing a decoder can read
    broken.PixelData = bytes(data)
    ct = make_dataset(study_uid=study, modality="CT", patient_name=NAME, patient_id="PID-4711-0815",
                      rows=32, columns=32)
    files = {"grey": grey, "rgb": rgb, "plain": plain, "broken": broken, "ct": ct}
    stored = archive.stow([to_bytes(ds) for ds in files.values()], "burned")
    assert stored.status_code == 200, stored.text
    return {"files": files, "texts": grey_texts}


def _lineage(archive: Archive, name: str) -> dict[str, dict[str, Any]]:
    items = archive.get(f"{archive.gateway.root}/admin/collections/{name}/lineage").json()["items"]
    return {i["sourceSOPInstanceUID"]: i for i in items}


@pytest.fixture(scope="module")
def held(archive: Archive, burned: dict[str, Any]) -> dict[str, Any]:
    created = archive.cli("share", "create", "burned-clean", "--from", "burned", "--profile",
                          "basic,clean-pixels", "--wait", "--quiet")
    assert created.returncode == 0, created.stderr + created.stdout
    assert "version 1: review, 1 instances, 1 excluded, 3 held for review" in created.stdout, created.stdout
    return {"lineage": _lineage(archive, "burned-clean")}


def test_nothing_cleaned_is_visible_before_review(archive: Archive, burned: dict[str, Any],
                                                  held: dict[str, Any]) -> None:
    files, lineage = burned["files"], held["lineage"]
    states = {key: lineage[ds.SOPInstanceUID]["state"] for key, ds in files.items()}
    assert states == {"grey": "review", "rgb": "review", "plain": "review", "broken": "excluded",
                      "ct": "done"}
    assert lineage[files["broken"].SOPInstanceUID]["reason"].startswith("burned-in text could not be checked")
    assert lineage[files["ct"].SOPInstanceUID]["pixels"] is None  # a CT is not looked at
    found = archive.get(f"{archive.gateway.url}/partitions/burned-clean/instances").json()
    assert [i["00080060"]["Value"] for i in found] == [["CT"]]
    versions = archive.get(f"{archive.gateway.root}/collections/burned-clean/versions").json()["versions"]
    assert versions == []
    assert archive.get(f"{archive.gateway.root}/collections/burned-clean/versions/1/manifest.csv"
                       ).status_code == 404


def test_review_draws_every_cleaned_image_with_its_boxes(archive: Archive, burned: dict[str, Any],
                                                         held: dict[str, Any], tmp_path: Path) -> None:
    listed = archive.cli("share", "review", "burned-clean", "--json")
    assert listed.returncode == 0, listed.stderr
    review = json.loads(listed.stdout)
    assert review["state"] == "review" and len(review["images"]) == 3
    grey_uid = held["lineage"][burned["files"]["grey"].SOPInstanceUID]["SOPInstanceUID"]
    [grey] = [i for i in review["images"] if i["SOPInstanceUID"] == grey_uid]
    boxes = grey["boxes"]["0"]
    covered = np.zeros((int(grey["rows"]), int(grey["columns"])), dtype=bool)
    for row0, col0, row1, col1 in boxes:
        covered[row0:row1, col0:col1] = True
    for rendered in burned["texts"]:
        row0, col0, row1, col1 = rendered.box
        assert covered[row0:row1, col0:col1].mean() >= 0.99, rendered
    plain_uid = held["lineage"][burned["files"]["plain"].SOPInstanceUID]["SOPInstanceUID"]
    [plain] = [i for i in review["images"] if i["SOPInstanceUID"] == plain_uid]
    assert plain["boxes"] == {} and plain["wholeFrames"] == []

    drawn = archive.cli("share", "review", "burned-clean", "--out", str(tmp_path / "review"))
    assert drawn.returncode == 0, drawn.stderr
    assert "3 images (2 with text redacted, 1 with none found); version 1 is review" in drawn.stdout
    assert "dicomgw share publish burned-clean --version 1" in drawn.stdout
    pictures = sorted(p.name for p in (tmp_path / "review").glob("*.png"))
    assert len(pictures) == 3 and f"{grey_uid}_f0.png" in pictures
    assert grey_uid in (tmp_path / "review" / "index.html").read_text()
    # the held copy is the cleaned one: the rendered strings are gone from it already
    got = archive.get(f"{archive.gateway.root}/admin/collections/burned-clean/versions/1/cleaned/{grey_uid}")
    assert got.status_code == 200 and got.headers["content-type"] == "application/dicom"
    assert pydicom.dcmread(io.BytesIO(got.content)).BurnedInAnnotation == "NO"
    sample = archive.cli("share", "review", "burned-clean", "--sample", "1", "--json")
    assert len(json.loads(sample.stdout)["images"]) == 1


def _independent_reads(ds: Dataset) -> list[str]:
    decoded = pixel_codecs.decode(ds)
    table = palette_table(ds) if decoded.indices else None
    image = view(decoded.values[0], decoded.photometric, table)
    grey = image if image.ndim == 2 else image.mean(axis=-1).astype(np.uint8)
    reader = Tesseract(scale=2.0)  # light text on dark and dark on light
    return [w.text for w in reader.read(255 - grey)] + [w.text for w in reader.read(grey)]


@pytest.fixture(scope="module")
def published(archive: Archive, burned: dict[str, Any], held: dict[str, Any]) -> dict[str, Any]:
    rgb_uid = held["lineage"][burned["files"]["rgb"].SOPInstanceUID]["SOPInstanceUID"]
    done = archive.cli("share", "publish", "burned-clean", "--reject", rgb_uid, "--wait", "--quiet")
    assert done.returncode == 0, done.stderr + done.stdout
    assert "version 1: complete, 3 instances, 2 excluded" in done.stdout, done.stdout
    return {"lineage": _lineage(archive, "burned-clean"), "rejected": rgb_uid}


def test_published_images_read_nothing_and_say_they_were_cleaned(archive: Archive, burned: dict[str, Any],
                                                                 published: dict[str, Any]) -> None:
    assert Tesseract.available(), "Tesseract is missing: make tools-tesseract installs it"
    original = burned["files"]["grey"]
    before = _independent_reads(original)
    assert [s for s in STRINGS if reads(before, s)], before  # else the check below proves nothing
    item = published["lineage"][original.SOPInstanceUID]
    assert item["state"] == "done"
    found = archive.get(f"{archive.gateway.url}/partitions/burned-clean/instances",
                        params={"SOPInstanceUID": item["SOPInstanceUID"]}).json()
    shared = archive.get(found[0]["00081190"]["Value"][0],
                         headers={"Accept": "application/dicom; transfer-syntax=*"}).content
    ds = pydicom.dcmread(io.BytesIO(shared))
    assert ds.BurnedInAnnotation == "NO" and ds.PatientName != NAME
    assert CLEAN_PIXEL_DATA[0] in [str(c.CodeValue) for c in ds.DeidentificationMethodCodeSequence]
    after = _independent_reads(ds)
    assert not [s for s in STRINGS if reads(after, s)], after
    plain = published["lineage"][burned["files"]["plain"].SOPInstanceUID]
    assert plain["state"] == "done"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain_ds = pydicom.dcmread(io.BytesIO(archive.get(
            f"{archive.gateway.root}/admin/collections/burned-clean/versions/1/cleaned/{plain['SOPInstanceUID']}"
        ).content))
    assert np.array_equal(plain_ds.pixel_array, burned["files"]["plain"].pixel_array)  # no text: untouched
    rejected = published["lineage"][burned["files"]["rgb"].SOPInstanceUID]
    assert rejected["state"] == "excluded" and rejected["reason"] == "rejected in review"
    gone = archive.get(f"{archive.gateway.root}/admin/collections/burned-clean/versions/1/cleaned/"
                       f"{published['rejected']}")
    assert gone.status_code == 404


def test_the_report_counts_what_was_cleaned_and_lists_every_box(archive: Archive, burned: dict[str, Any],
                                                                published: dict[str, Any]) -> None:
    base = f"{archive.gateway.root}/collections/burned-clean/versions/1"
    report = archive.get(f"{base}/report.json").json()
    counts = report["cleanPixelData"]
    assert {k: counts[k] for k in ("checked", "cleaned", "noTextFound", "excluded", "rejectedInReview")} == {
        "checked": 4, "cleaned": 1, "noTextFound": 1, "excluded": 1, "rejectedInReview": 1}
    assert report["excludedBy"] == {"burned-in text could not be checked": 1, "rejected in review": 1}
    assert counts["rules"] and counts["boxes"] >= len(STRINGS)
    rows = list(csv.DictReader(io.StringIO(archive.get(f"{base}/redactions.csv").text)))
    grey_uid = published["lineage"][burned["files"]["grey"].SOPInstanceUID]["SOPInstanceUID"]
    assert {r["sop_instance_uid"] for r in rows} == {grey_uid} and len(rows) == counts["boxes"]
    exclusions = archive.get(f"{base}/exclusions.csv").text
    assert "DOE" not in exclusions and "4711" not in exclusions  # reasons never say what was read
    again = archive.get(f"{archive.gateway.root}/admin/collections/burned-clean/versions/1/cleaned")
    assert {i["state"] for i in again.json()["images"]} == {"done"}


def test_publishing_twice_or_review_without_cleaning_is_refused(archive: Archive,
                                                                published: dict[str, Any]) -> None:
    again = archive.cli("share", "publish", "burned-clean", "--version", "1")
    assert again.returncode != 0 and "not in review" in again.stderr
    refused = archive.cli("share", "create", "no-clean", "--from", "burned", "--review")
    assert refused.returncode != 0 and "clean-pixels" in refused.stderr


def test_without_review_cleaned_images_are_published_at_once(archive: Archive,
                                                             burned: dict[str, Any]) -> None:
    created = archive.cli("share", "create", "burned-auto", "--from", "burned", "--profile",
                          "basic,clean-pixels", "--no-review", "--wait", "--quiet")
    assert created.returncode == 0, created.stderr + created.stdout
    assert "version 1: complete, 4 instances, 1 excluded" in created.stdout, created.stdout
    lineage = _lineage(archive, "burned-auto")
    assert lineage[burned["files"]["grey"].SOPInstanceUID]["pixels"]["boxes"]
