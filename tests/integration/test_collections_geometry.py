"""The manifest's geometry flag, end to end: a collection built from a regular axial series, one with a
missing slice, localizers in three planes, an enhanced CT (geometry per frame) and radiographs without
any position. Each series' rows say what the client's planner makes of all its frames ("volume",
"stacks", "irregular", "2d"), in the Parquet and the CSV alike, with the first frame's position and
orientation; and CollectionDataset, which plans the same frames from the archive's metadata, yields
items for exactly the series flagged "volume" or "stacks" and skips the others, for the reasons the
flag gives. Rows and manifests written before the flag existed still load."""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, fields
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyarrow.parquet as pq
import pydicom
import pytest

from dicomgw.collections import manifest
from dicomgw.collections.builder import _frames, _frames_json, _rows_with_geometry
from dicomgw_client import CollectionDataset, volume
from tests.dicomdata import make_dataset, to_bytes, uid
from tests.integration.test_collections import Archive, _archive, _manifest, mr_volume
from tests.unit.test_volume import ENHANCED_CT, oblique_series

pytestmark = pytest.mark.timeout(600)
SOURCE, NAME = "geometry-source", "geometry"
NEW_COLUMNS = ["image_position_patient", "image_orientation_patient", "geometry", "geometry_detail"]
# each series is told apart in the manifest by its number of instances
REGULAR, GAP, LOCALIZERS, RADIOGRAPHS, ENHANCED = 8, 7, 9, 2, 1


def localizers() -> list[bytes]:
    """Three slices in each of the axial, sagittal and coronal planes: one series, one frame of reference."""
    orientations = (([1.0, 0.0, 0.0], [0.0, 1.0, 0.0]),  # axial
                    ([0.0, 1.0, 0.0], [0.0, 0.0, -1.0]),  # sagittal
                    ([1.0, 0.0, 0.0], [0.0, 0.0, -1.0]))  # coronal
    planes = [oblique_series(3, orientation=orientation) for orientation in orientations]
    first = planes[0][0]
    for ds in (ds for plane in planes for ds in plane):
        ds.StudyInstanceUID, ds.SeriesInstanceUID = first.StudyInstanceUID, first.SeriesInstanceUID
        ds.FrameOfReferenceUID = first.FrameOfReferenceUID
    return [to_bytes(ds) for plane in planes for ds in plane]


def radiographs() -> list[bytes]:
    """Two chest radiographs: no position, no orientation, nothing to place them by."""
    study, series = uid(), uid()
    return [to_bytes(make_dataset(study_uid=study, series_uid=series, modality="CR",
                                  sop_class_uid="1.2.840.10008.5.1.4.1.1.1", instance_number=i + 1,
                                  rows=40, columns=32, seed=i, extra={"BodyPartExamined": "CHEST"}))
            for i in range(RADIOGRAPHS)]


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    archive = _archive(tmp_path_factory.mktemp("collections-geometry"))
    yield archive
    archive.gateway.stop()


@pytest.fixture(scope="module")
def built(archive: Archive) -> dict[str, Any]:
    """The collection of every series, and its manifest's rows by series (Parquet and CSV)."""
    assert archive.cli("partitions", "create", SOURCE).returncode == 0
    study = uid()
    gap = mr_volume(study, "Golf", "20240301", 2, slices=GAP + 1)
    del gap[3]  # the fourth slice is missing: one step of 5 mm among steps of 2.5 mm
    parts = [*mr_volume(study, "Golf", "20240301", 1, slices=REGULAR), *gap, *localizers(),
             *radiographs(), ENHANCED_CT.read_bytes()]
    stored = archive.stow(parts, SOURCE)
    assert stored.status_code == 200, stored.text
    created = archive.cli("share", "create", NAME, "--from", SOURCE, "--profile", "basic", "--wait",
                          "--quiet")
    assert created.returncode == 0, created.stderr + created.stdout
    total = REGULAR + GAP + LOCALIZERS + RADIOGRAPHS + ENHANCED
    assert f"version 1: complete, {total} instances, 0 excluded" in created.stdout, created.stdout
    got = archive.get(f"{archive.gateway.root}/collections/{NAME}/versions/1/manifest.parquet")
    assert got.status_code == 200, got.text
    table = pq.read_table(io.BytesIO(got.content))
    csv_rows = _manifest(archive, NAME, 1)
    out: dict[str, Any] = {"columns": table.column_names, "csv_columns": list(csv_rows[0])}
    for form, rows in (("parquet", table.to_pylist()), ("csv", csv_rows)):
        by_series: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in rows:
            by_series[row["series_instance_uid"]].append(row)
        out[form] = {len(members): members for members in by_series.values()}
        assert sorted(out[form]) == sorted([REGULAR, GAP, LOCALIZERS, RADIOGRAPHS, ENHANCED])
    return out


def _one(rows: list[dict[str, Any]], column: str) -> str:
    """A series column's value: the same on every row of the series."""
    [value] = {r[column] for r in rows}
    return str(value)


def test_the_new_columns_come_after_the_existing_ones(built: dict[str, Any]) -> None:
    assert built["columns"] == [f.name for f in fields(manifest.ManifestRow)]
    assert built["columns"][built["columns"].index("sha256") + 1:] == NEW_COLUMNS
    assert built["csv_columns"] == built["columns"]


@pytest.mark.parametrize("form", ["parquet", "csv"])
def test_each_series_is_flagged_as_the_planner_sees_all_its_frames(built: dict[str, Any], form: str) -> None:
    series = built[form]
    flags = {n: (_one(rows, "geometry"), _one(rows, "geometry_detail")) for n, rows in series.items()}
    assert flags[REGULAR] == ("volume", "")
    assert flags[LOCALIZERS] == ("stacks", "3 regular stacks")
    assert flags[RADIOGRAPHS] == ("2d", "")
    # both frames of the enhanced CT take part: one regular stack of two
    assert flags[ENHANCED] == ("volume", "")
    geometry, detail = flags[GAP]
    assert geometry == "irregular"
    assert detail.startswith(f"{GAP} frames: unequal slice spacing") and "gap" in detail, detail


@pytest.mark.parametrize("form", ["parquet", "csv"])
def test_position_and_orientation_are_the_first_frame_s_as_dicom_writes_them(built: dict[str, Any],
                                                                            form: str) -> None:
    series = built[form]
    assert {r["image_position_patient"] for r in series[REGULAR]} == {
        f"-20.0\\-30.0\\{i * 2.5}" for i in range(REGULAR)}
    assert _one(series[REGULAR], "image_orientation_patient") == "1.0\\0.0\\0.0\\0.0\\1.0\\0.0"
    assert len({r["image_orientation_patient"] for r in series[LOCALIZERS]}) == 3
    # an enhanced object's from its functional groups (per frame, then shared): it has none at the top
    original = pydicom.dcmread(ENHANCED_CT)
    assert "ImagePositionPatient" not in original and "ImageOrientationPatient" not in original
    [enhanced] = series[ENHANCED]
    assert enhanced["image_position_patient"] == "99.5000\\-301.500\\-159.000"
    assert enhanced["image_orientation_patient"] == "-1.00000\\0.00000\\0.00000\\0.00000\\1.00000\\0.00000"
    assert {(r["image_position_patient"], r["image_orientation_patient"]) for r in series[RADIOGRAPHS]} == {
        ("", "")}


def test_the_dataset_yields_what_the_flag_says_and_skips_the_rest(archive: Archive, built: dict[str, Any],
                                                                  tmp_path: Path) -> None:
    series = built["parquet"]
    uids = {n: rows[0]["series_instance_uid"] for n, rows in series.items()}
    dataset = CollectionDataset(archive.gateway.url, NAME, level="series", cache_dir=tmp_path,
                                token=archive.admin)
    items = [item["meta"] for item in dataset]
    got = defaultdict(list)
    for meta in items:
        got[meta["series_instance_uid"]].append(meta)
        # the flag is a series column: one value in the item's meta
        assert meta["geometry"] in ("volume", "stacks")
    # "volume": one item; "stacks": one item per stack; nothing else yields an item
    assert {s: len(m) for s, m in got.items()} == {uids[REGULAR]: 1, uids[ENHANCED]: 1, uids[LOCALIZERS]: 3}
    assert sorted(len(m["frame"]) for m in got[uids[LOCALIZERS]]) == [3, 3, 3]
    assert len(got[uids[ENHANCED]][0]["frame"]) == 2
    # what is skipped is what the flag says is not a volume, for the reason it gives
    skipped = {s.series_instance_uid: s for s in dataset.skipped}
    assert set(skipped) == {uids[GAP], uids[RADIOGRAPHS]}
    gap = skipped[uids[GAP]]
    assert _one(series[GAP], "geometry_detail") == f"{gap.frames} frames: {gap.reason}"
    assert skipped[uids[RADIOGRAPHS]].frames == RADIOGRAPHS


# ---- rows stored before the flag existed -------------------------------------------------------------
def _row(**values: Any) -> manifest.ManifestRow:
    base = dict(path="s/x/i.dcm", patient_id="P", study_instance_uid="1.2", series_instance_uid="1.2.3",
                sop_instance_uid="1.2.3.4", sop_class_uid="1.2.840.10008.5.1.4.1.1.4", modality="MR",
                body_part_examined="", series_description="", rows=4, columns=4, frames=1,
                pixel_spacing="1\\1", slice_thickness="1", sha256="0" * 64)
    return manifest.ManifestRow(**{**base, **values})


def test_a_row_stored_before_the_new_columns_still_loads(tmp_path: Path) -> None:
    old = {k: v for k, v in asdict(_row()).items() if k not in NEW_COLUMNS}
    loaded = manifest.ManifestRow(**json.loads(json.dumps(old)))
    assert [getattr(loaded, c) for c in NEW_COLUMNS] == ["", "", "", ""]
    # and a manifest written then reads back
    path = tmp_path / "manifest.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(old))
        writer.writeheader()
        writer.writerow(old)
    assert manifest.read(path) == [loaded]


def test_a_series_with_an_item_built_before_the_flag_is_unknown() -> None:
    """Frames are kept per item from now on: a series that also holds an item of an earlier build cannot
    be planned whole, so its flag is "" rather than a guess from some of its frames."""
    datasets = oblique_series(4)
    rows = [_row(path=f"s/x/{i}.dcm", sop_instance_uid=str(ds.SOPInstanceUID))
            for i, ds in enumerate(datasets)]
    items = [SimpleNamespace(row_json=json.dumps(asdict(r)), frames_json=_frames_json(ds))
             for r, ds in zip(rows, datasets, strict=True)]
    # the frames kept are the planner's, field for field
    assert _frames(items[0].frames_json) == volume.frames_of(datasets[0])
    flags = {(r.geometry, r.geometry_detail) for r in _rows_with_geometry(items)}  # type: ignore[arg-type]
    assert flags == {("volume", "")}
    items[2].frames_json = None
    flags = {(r.geometry, r.geometry_detail) for r in _rows_with_geometry(items)}  # type: ignore[arg-type]
    assert flags == {("", "")}
