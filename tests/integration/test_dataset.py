"""The client's CollectionDataset over a real gateway, as a training loop uses it: a collection built by
the archive from real CT and MR series (pydicom's and pydicom-data's files: regular stacks, a gap,
localizers in three planes, radial slices, a slice twice at one place, lossless and lossy JPEG 2000,
JPEG-LS, enhanced objects) and a synthetic oblique MR stack, read with a key that reads only the
collection.

Each volume is checked against one built independently from the same de-identified files (pydicom,
sorted by position, rescale applied) and against dcm2niix's conversion of them read back by nibabel;
each 2D item against the file's own pixels. Then what a DataLoader does (two worker processes, fork and
spawn), the cache (a second epoch and an offline run send nothing, a damaged file is fetched again, the
least recently used go past the limit), and the docs' training loop, run as written."""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
import pickle
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow.parquet as pq
import pydicom
import pytest
from pydicom.dataset import Dataset

from dicomgw_client import ArchiveError, Cache, CollectionDataset, IntegrityError
from tests.dicomdata import multipart_related, to_bytes, with_fresh_sop_uid
from tests.fixtures.gateway import Gateway, create_key, start_gateway
from tests.polling import wait_for
from tests.unit.test_volume import dcm2niix_volume, oblique_series, reference_volume

pytestmark = pytest.mark.timeout(300)
REPO = Path(__file__).resolve().parents[2]
DICOMGW = Path(sys.executable).parent / "dicomgw"
ENV = {"DICOMGW_AUTH_MODE": "required", "DICOMGW_AUTH_KEY_SECRET": "dataset-tests"}
COLLECTION = "mr-brain-2024"  # the name docs/datasets.md uses
PYDICOM = Path(pydicom.__file__).parent / "data" / "test_files"
PYDICOM_DATA = Path(__import__("data_store").__file__).parent / "data"


def real_files() -> list[bytes]:
    """Real CT and MR series: regular, with a gap, in several planes, radial, twice at one position,
    compressed, enhanced."""
    dicomdir = PYDICOM / "dicomdirtests"
    paths = [*sorted((dicomdir / "98892001" / "CT5N").iterdir()),  # 5 axial slices, InstanceNumber reversed
             *sorted((dicomdir / "77654033" / "CT2").iterdir()),  # a gap of 200 mm
             *sorted((dicomdir / "98892003" / "MR2").iterdir()),  # localizers in three planes
             *sorted((dicomdir / "98892003" / "MR700").iterdir()),  # seven radial slices
             PYDICOM / "MR_small.dcm",
             PYDICOM_DATA / "MR2_J2KI.dcm",  # oblique, lossy JPEG 2000, 1024 x 1024
             PYDICOM_DATA / "693_J2KR.dcm",  # JPEG 2000
             PYDICOM_DATA / "emri_small_jpeg_ls_lossless.dcm",  # enhanced MR, 10 frames, JPEG-LS
             PYDICOM_DATA / "eCT_Supplemental.dcm"]  # enhanced CT, geometry per frame
    ct_small = (PYDICOM / "CT_small.dcm").read_bytes()
    # the same slice sent again as another instance: two frames at one position
    return [*(p.read_bytes() for p in paths), ct_small, with_fresh_sop_uid(ct_small)]


class Slice:
    """One frame of an instance as a single slice: its geometry and rescale, and its pixels."""

    def __init__(self, values: dict[str, Any], pixels: np.ndarray) -> None:
        self.__dict__.update(values)
        self.pixel_array = pixels

    def get(self, key: str, default: Any = None) -> Any:
        return self.__dict__.get(key, default)

    def __contains__(self, key: str) -> bool:
        return key in self.__dict__


def frame_slice(ds: Dataset, frame: int) -> Dataset | Slice:
    """Frame ``frame`` (1-based) of ``ds``; an enhanced object's with the geometry and rescale of its
    functional groups (per frame, then shared), read here independently of the client."""
    if int(ds.get("NumberOfFrames") or 1) == 1:
        return ds
    groups = [ds.PerFrameFunctionalGroupsSequence[frame - 1] if "PerFrameFunctionalGroupsSequence" in ds
              else Dataset(),
              ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else Dataset()]

    def value(sequence: str, keyword: str, default: Any = None) -> Any:
        for group in groups:
            if sequence in group and keyword in group[sequence][0]:
                return group[sequence][0][keyword].value
        return ds.get(keyword, default)

    values = {"ImagePositionPatient": value("PlanePositionSequence", "ImagePositionPatient"),
              "ImageOrientationPatient": value("PlaneOrientationSequence", "ImageOrientationPatient"),
              "RescaleSlope": value("PixelValueTransformationSequence", "RescaleSlope", 1),
              "RescaleIntercept": value("PixelValueTransformationSequence", "RescaleIntercept", 0)}
    return Slice({k: v for k, v in values.items() if v is not None}, ds.pixel_array[frame - 1])


@dataclass
class Built:
    gateway: Gateway
    admin: str
    reader: str  # reads the collection and nothing else
    version: int
    rows: list[dict[str, Any]]
    files: dict[str, bytes]  # de-identified objects by SOP Instance UID, fetched without the client

    @property
    def url(self) -> str:
        return self.gateway.url

    def dataset(self, cache_dir: Path, **kwargs: Any) -> CollectionDataset:
        return CollectionDataset(self.url, COLLECTION, cache_dir=cache_dir, token=self.reader, **kwargs)

    def parsed(self, sop: str) -> Dataset:
        return pydicom.dcmread(io.BytesIO(self.files[sop]))



@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    data = tmp_path_factory.mktemp("datasets")
    gateway = start_gateway(data, ENV)
    try:
        env = {**os.environ, **ENV, "DATA_DIR": str(data),
               "DICOMGW_INDEX_URL": f"sqlite+aiosqlite:///{data.resolve() / 'index.sqlite3'}"}
        admin = create_key(env, "data-manager", "dicom.read,dicom.write,dicom.admin")
        reader = create_key(env, "trainer", f"dicom.read:{COLLECTION}")
        headers = {"Authorization": f"Bearer {admin}"}
        made = httpx.post(f"{gateway.root}/admin/partitions", json={"name": "source"}, headers=headers)
        assert made.status_code == 201, made.text
        body, content_type = multipart_related([*real_files(), *map(to_bytes, oblique_series(9))])
        stored = httpx.post(f"{gateway.url}/partitions/source/studies", content=body, timeout=120,
                            headers={**headers, "Content-Type": content_type})
        assert stored.status_code in (200, 202), stored.text
        defined = httpx.post(f"{gateway.root}/admin/collections", headers=headers,
                             json={"name": COLLECTION, "source": "source"})
        assert defined.status_code == 202, defined.text

        def complete() -> dict[str, Any] | None:
            described = httpx.get(f"{gateway.root}/admin/collections/{COLLECTION}", headers=headers).json()
            [v] = described["versions"]
            assert v["state"] != "failed", v
            return v if v["state"] == "complete" else None

        version = wait_for(complete, 120, interval=0.2, log=gateway.log)
        manifest = httpx.get(f"{gateway.root}/collections/{COLLECTION}/versions/latest/manifest.parquet",
                             headers={"Authorization": f"Bearer {reader}"})
        assert manifest.status_code == 200, manifest.text
        rows = pq.read_table(io.BytesIO(manifest.content)).to_pylist()
        files = {}
        for row in rows:
            got = httpx.get(f"{gateway.url}/partitions/{COLLECTION}/studies/{row['study_instance_uid']}"
                            f"/series/{row['series_instance_uid']}/instances/{row['sop_instance_uid']}",
                            headers={"Authorization": f"Bearer {reader}",
                                     "Accept": "application/dicom; transfer-syntax=*"})
            assert hashlib.sha256(got.content).hexdigest() == row["sha256"]
            files[row["sop_instance_uid"]] = got.content
        yield Built(gateway, admin, reader, version["version"], rows, files)
    finally:
        gateway.stop()


# ---- what an item is ---------------------------------------------------------------------------------
def test_every_series_volume_is_the_independent_one_and_dcm2niix_s(built: Built, tmp_path: Path) -> None:
    dataset = built.dataset(tmp_path)
    assert dataset.version == built.version and len(built.rows) == 39
    series = {r["series_instance_uid"] for r in built.rows}
    # 20 regular stacks: CT5N, 7 radial slices, 3 + 3 + 1 localizers, MR_small, the two JPEG 2000 images,
    # the oblique MR, the enhanced CT (its frames placed by the functional groups the de-identified copy
    # keeps); left out: the gap, CT_small twice at one place, the enhanced MR (its file has no geometry)
    assert len(dataset) == 20, dataset.skipped
    reasons = sorted(s.reason.split(":")[0].split(" (")[0] for s in dataset.skipped)
    assert reasons == ["2 frames at one position", "no position, orientation or pixel spacing",
                       "unequal slice spacing"], reasons
    assert {item["meta"]["series_instance_uid"] for item in dataset} | {
        s.series_instance_uid for s in dataset.skipped} == series
    compared = 0
    for item in dataset:
        image, affine, meta = item["image"], item["affine"], item["meta"]
        datasets = [frame_slice(built.parsed(sop), frame)
                    for sop, frame in zip(meta["sop_instance_uid"], meta["frame"], strict=True)]
        assert image.dtype == np.float32 and affine.shape == (4, 4)
        np.testing.assert_array_equal(image, reference_volume(datasets).astype(np.float32))
        assert meta["modality"] in ("CT", "MR") and meta["patient_id"].startswith("P-")
        assert len(meta["path"]) == image.shape[2] == len(meta["frame"])
        files = [built.files[sop] for sop in dict.fromkeys(meta["sop_instance_uid"])]  # an enhanced one once
        voxels, reference = dcm2niix_volume(files)
        assert voxels.shape == image.shape
        np.testing.assert_allclose(image, voxels, atol=1e-3)
        np.testing.assert_allclose(affine, reference, atol=1e-4)
        compared += 1
    assert compared == 20


def test_every_2d_item_is_the_file_s_pixels_in_real_world_values(built: Built, tmp_path: Path) -> None:
    dataset = built.dataset(tmp_path, level="instance")
    assert len(dataset) == sum(r["frames"] for r in built.rows) == 39 - 2 + 10 + 2
    for item in dataset:
        meta = item["meta"]
        ds = frame_slice(built.parsed(meta["sop_instance_uid"]), meta["frame"])
        expected = ds.pixel_array * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
        np.testing.assert_array_equal(item["image"], expected.astype(np.float32))
        if "ImagePositionPatient" in ds:
            position = np.asarray(ds.ImagePositionPatient, dtype=float)
            np.testing.assert_allclose(item["affine"] @ [0, 0, 0, 1], [-position[0], -position[1],
                                                                       position[2], 1], atol=1e-6)
        else:
            assert np.isnan(item["affine"]).all()


def test_where_selects_on_manifest_columns(built: Built, tmp_path: Path) -> None:
    ct = built.dataset(tmp_path, level="instance", where={"modality": "CT", "rows": lambda rows: rows >= 128})
    assert {r["modality"] for r in ct.rows} == {"CT"} and all(r["rows"] >= 128 for r in ct.rows)
    assert len(ct.rows) == sum(r["modality"] == "CT" and r["rows"] >= 128 for r in built.rows) > 0
    several = built.dataset(tmp_path, where={"modality": {"MR"}})
    assert len(several) == 17 and all(i["meta"]["modality"] == "MR" for i in several)
    with pytest.raises(ValueError, match="no manifest column"):
        built.dataset(tmp_path, where={"PatientName": "x"})


def test_without_a_credential_the_archive_refuses(built: Built, tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="401"):
        CollectionDataset(built.url, COLLECTION, cache_dir=tmp_path, token="")


def test_the_client_needs_nothing_of_the_server_nor_torch() -> None:
    """A training node or a workstation installs the client alone: its dependencies, and what importing
    it loads, its commands (upload, share, pull) included."""
    import tomllib

    project = tomllib.loads((REPO / "clients" / "dicomgw-client" / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[<>=\[ ]", d)[0] for d in project["dependencies"]}
    assert names == {"httpx", "numpy", "pydicom", "pylibjpeg", "pylibjpeg-libjpeg",
                     "pylibjpeg-openjpeg", "pylibjpeg-rle", "pyarrow", "pillow"}
    modules = ["dicomgw_client", "dicomgw_client.dataset", "dicomgw_client.volume", "dicomgw_client.cli",
               "dicomgw_client.pull", "dicomgw_client.upload", "dicomgw_client.share",
               "dicomgw_client.review", "dicomgw_client.admin"]
    code = (f"import contextlib, sys, {', '.join(modules)}\n"
            "with contextlib.suppress(SystemExit):\n"  # the commands' parsers built (--help exits)
            "    dicomgw_client.cli.main(['share', 'review', '--help'])\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'dicomgw', 'dicomgw_gateway', "
            "'dicomgw_ingest', 'dicomgw_query', 'dicomgw_retrieve', 'dicomgw_worker', 'dicomgw_dimse', "
            "'fastapi', 'sqlalchemy', 'celery', 'starlette', 'nibabel', 'monai', 'imagecodecs'}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip().splitlines()[-1] == "[]", done.stdout + done.stderr
    # and no module of the package imports one of the server's, nor rich (httpx imports rich where it
    # is installed, as it is here: what the package itself imports is read from its source)
    for source in (REPO / "clients" / "dicomgw-client" / "src" / "dicomgw_client").glob("*.py"):
        imports = re.findall(r"^\s*(?:from|import)\s+([\w.]+)", source.read_text(), re.M)
        assert not {i.split(".")[0] for i in imports} & {"dicomgw", "dicomgw_gateway", "rich"}, source


# ---- several processes -------------------------------------------------------------------------------
def _digest(item: dict[str, Any]) -> str:
    return hashlib.sha256(item["image"].tobytes() + item["affine"].tobytes()).hexdigest()


def read_share(dataset: CollectionDataset, worker: int, workers: int, results: Any) -> None:
    """What a DataLoader worker does: its share of the indices, with the dataset it was handed."""
    seen = [(index, _digest(dataset[index])) for index in range(worker, len(dataset), workers)]
    # the HTTP client it used was opened in this process, not inherited from the parent
    own_client = dataset.archive._client is not None and dataset.archive._pid == os.getpid()
    results.put((os.getpid(), dataset.requests if own_client else -1, seen))


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_two_worker_processes_see_every_index_once(built: Built, tmp_path: Path, method: str) -> None:
    dataset = built.dataset(tmp_path / "shared-cache")
    expected = _digest(dataset[0])  # the parent's own client is open when the workers start
    assert dataset.archive._client is not None
    context = multiprocessing.get_context(method)
    results = context.Queue()
    workers = [context.Process(target=read_share, args=(dataset, n, 2, results)) for n in range(2)]
    for process in workers:
        process.start()
    got = [results.get(timeout=120) for _ in workers]
    for process in workers:
        process.join(timeout=60)
        assert process.exitcode == 0
    pids = {pid for pid, _, _ in got}
    assert len(pids) == 2 and os.getpid() not in pids
    # each worker fetched what the cache lacked with a client of its own
    assert all(requests > 0 for _, requests, _ in got), got
    indices = sorted(index for _, _, seen in got for index, _ in seen)
    assert indices == list(range(len(dataset)))
    digests = dict(item for _, _, seen in got for item in seen)
    assert digests[0] == expected
    assert all(digests[i] == _digest(dataset[i]) for i in range(1, len(dataset)))


def test_a_pickled_dataset_holds_no_connection(built: Built, tmp_path: Path) -> None:
    dataset = built.dataset(tmp_path)
    dataset[0]
    copy = pickle.loads(pickle.dumps(dataset))
    assert copy.archive._client is None and copy._pool is None and copy.requests == 0
    assert _digest(copy[0]) == _digest(dataset[0])


# ---- the cache ---------------------------------------------------------------------------------------
def test_a_second_epoch_and_an_offline_run_send_no_request(built: Built, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    dataset = built.dataset(tmp_path)
    first = [_digest(item) for item in dataset]
    after_first = dataset.requests
    # the versions, the manifest, one metadata request per study, the store's URLs (none: a local
    # store), one request per instance
    studies = len({r["study_instance_uid"] for r in built.rows})
    instances = len({sop for item in dataset._items for sop, _ in item.slices})  # type: ignore[union-attr]
    assert after_first == 3 + studies + instances
    assert [_digest(item) for item in dataset] == first
    assert dataset.requests == after_first
    # a later run of the same version: not a single request, not even for the manifest or the plans
    pinned = built.dataset(tmp_path, version=dataset.version)
    assert [_digest(item) for item in pinned] == first and pinned.requests == 0
    # the archive out of reach (every request goes to a closed port): the latest version cached
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    for name in ("NO_PROXY", "no_proxy", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    offline = built.dataset(tmp_path, retries=0)
    assert offline.version == dataset.version and [_digest(item) for item in offline] == first


def test_series_fetched_in_one_request_give_the_same_items(built: Built, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The series-level path (SERIES_REQUEST_MIN, lowered here to this corpus's series of 5 and 7): the
    same items, every object checked and cached, one request a series instead of one an instance."""
    import dicomgw_client.dataset as dataset_module

    expected = [_digest(item) for item in built.dataset(tmp_path / "per-instance")]
    monkeypatch.setattr(dataset_module, "SERIES_REQUEST_MIN", 5)
    dataset = built.dataset(tmp_path / "series")
    assert [_digest(item) for item in dataset] == expected
    studies = len({r["study_instance_uid"] for r in built.rows})
    slices = [{sop for sop, _ in item.slices} for item in dataset._items]  # type: ignore[union-attr]
    big = [s for s in slices if len(s) >= 5]
    instances = len(set().union(*slices))
    assert big and dataset.requests <= 3 + studies + len(big) + instances - sum(len(s) for s in big)
    for row in dataset.rows:
        if any(row["sop_instance_uid"] in s for s in big):
            path = dataset.cache.path(row["sha256"])
            assert hashlib.sha256(path.read_bytes()).hexdigest() == row["sha256"]


def test_a_damaged_cache_file_is_fetched_again(built: Built, tmp_path: Path) -> None:
    dataset = built.dataset(tmp_path, level="instance")
    item = dataset[3]
    row = item["meta"]  # the instance the item came from (an item is a frame: not rows[3] always)
    path = dataset.cache.path(row["sha256"])
    assert path.exists() and hashlib.sha256(path.read_bytes()).hexdigest() == row["sha256"]
    damaged = bytearray(path.read_bytes())
    damaged[-1] ^= 0xFF  # one bit of the last pixel: still a readable DICOM file
    path.write_bytes(bytes(damaged))
    before = dataset.requests
    again = dataset[3]
    assert dataset.requests == before + 1
    np.testing.assert_array_equal(again["image"], item["image"])
    assert hashlib.sha256(path.read_bytes()).hexdigest() == row["sha256"]
    # the same check on arrival: bytes that are not the manifest's are never kept
    with pytest.raises(IntegrityError):
        dataset.cache.put(row["sha256"], bytes(damaged))


def test_the_cache_evicts_the_least_recently_used_past_its_limit(tmp_path: Path) -> None:
    cache = Cache(tmp_path, max_bytes=3500)
    blobs = {name: name.encode() * 1000 for name in "abcd"}
    digest = {name: hashlib.sha256(blob).hexdigest() for name, blob in blobs.items()}
    now = time.time()
    for age, name in zip((300, 200, 100), "abc", strict=True):
        cache.put(digest[name], blobs[name])
        os.utime(cache.path(digest[name]), (now - age, now - age))
    assert cache.get(digest["a"]) == blobs["a"]  # used: now the most recent
    cache.put(digest["d"], blobs["d"])  # 4000 bytes > 3500: down to 90 % of it, oldest first
    assert [name for name in "abcd" if digest[name] in cache] == ["a", "c", "d"]
    assert cache.size() == 3000 <= 3500 and not list(tmp_path.glob("*/*.tmp"))


# ---- the documentation -------------------------------------------------------------------------------
def test_the_docs_training_loop_runs_as_written(built: Built, tmp_path: Path) -> None:
    text = (REPO / "docs" / "datasets.md").read_text()
    marker = text.index("<!-- tests/integration/test_dataset.py runs this block -->")
    code = re.search(r"```python\n(.*?)```", text[marker:], re.S)
    assert code is not None
    script = tmp_path / "train.py"
    script.write_text(code.group(1))
    env = {**os.environ, "DICOMGW_URL": built.url, "DICOMGW_TOKEN": built.reader,
           "DICOMGW_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    counts = [int(n) for n in re.findall(r"epoch \d+: .*?(\d+) requests", done.stdout)]
    assert len(counts) == 3 and counts[0] > 2 and counts[0] == counts[1] == counts[2], done.stdout
