"""Reading a research collection with the client package, against its baselines, in one run (issue 14).

    .venv/bin/python bench/datasets.py          # or: .venv/bin/python bench/run.py --only datasets

Everything runs on the local distributed stack of `make up` (nginx, split services, PostgreSQL, MinIO
with a replica, the Celery worker), started here on free ports. Two partitions are filled with STOW-RS
and a collection is built from each with ``dicomgw share create --profile basic`` (by the worker):

- ``bench-ct``: CT series of 200 slices, 512 x 512, 16-bit, uncompressed, with a real geometry
  (Image Position/Orientation Patient, pixel spacing, a rescale to HU);
- ``bench-small``: 7,000 small (64 x 64) MR instances.

Printed, each figure measured here and now against its baseline:

1. ``CollectionDataset(url, "bench-ct", level="series", cache_dir=<fresh>)`` iterated fully, twice:
   volumes (items) and MB of DICOM objects per second of the first epoch (construction, planning and
   every fetch included) against a naive dicomweb-client loop (QIDO-RS for the series, ``retrieve_series``
   for each, then the same work), and of the second epoch (the cache answers) against reading the same
   de-identified files, pulled to a local folder, with pydicom: parse, sort along the slice normal,
   apply the rescale, stack into a float32 volume. The readers take turns, round by round (fresh cache
   each round); the median round is reported. Goals: first epoch >= 2x naive; local / second <= 1.5.
   Also printed: the first epoch with two forked worker processes making the items, as a DataLoader
   with ``num_workers=2`` runs it (each volume pickled back to the loop), against the same naive loop.
2. ``dicomgw_client.pull.pull`` (``dicomgw-client pull``, its default concurrency) of each collection
   into a fresh folder, against copying the same objects (the collection partition's keys, matched to
   the manifest's SHA-256) straight from the same MinIO at the same concurrency, each written to a
   file, in two ways: with aiobotocore (an S3 client as a script would use it), and by presigned URLs
   signed beforehand and read with the standard library's http.client on kept-alive connections (the
   least a client can do: no check of the bytes, no resumable placement). Alternating rounds, the best of
   each. Goal: pull >= 80 % of the raw S3 copy (aiobotocore); the other ratio is printed beside it.
"""

from __future__ import annotations

import asyncio
import inspect
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import versus  # noqa: E402
from tests.dicomdata import make_dataset, to_bytes  # noqa: E402

BIN = Path(sys.executable).parent
CT_SOURCE, CT = "bench-ct-source", "bench-ct"
SMALL_SOURCE, SMALL = "bench-small-source", "bench-small"
GOAL_FIRST_OVER_NAIVE = 2.0
GOAL_LOCAL_OVER_SECOND = 1.5
GOAL_PULL_OVER_RAW = 0.8


STARTED = time.monotonic()


def say(what: str) -> None:
    """Progress on stderr (the figures go to stdout)."""
    print(f"[datasets {time.monotonic() - STARTED:6.0f} s] {what}", file=sys.stderr, flush=True)


# ---- the corpora --------------------------------------------------------------------------------------
def ct_series(n_series: int = 3, slices: int = 200, size: int = 512, seed: int = 14) -> list[bytes]:
    """``n_series`` axial CT series of ``slices`` slices (``size`` x ``size``, 16-bit, Explicit VR Little
    Endian), one patient and study each, head first: slice 1 at the top, 1.25 mm apart; sent in a
    shuffled order so that no reader gains from the order the archive holds them in."""
    root = f"1.2.826.0.1.3680043.10.1234.14{int(time.time())}"
    parts = []
    for s in range(n_series):
        study, series, frame_of_reference = f"{root}.1{s}", f"{root}.2{s}", f"{root}.3{s}"
        for i in range(slices):
            parts.append(to_bytes(make_dataset(
                study_uid=study, series_uid=series, sop_uid=f"{root}.4{s}.{i + 1}", modality="CT",
                patient_name=f"Bench^CT{s}", patient_id=f"BENCH-CT-{s}", accession=f"B{s}",
                series_number=s + 1, instance_number=i + 1, rows=size, columns=size, seed=s * 1000 + i,
                series_description="CHEST 1.25mm", extra={
                    "ImagePositionPatient": [-175.0, -175.0 + 0.5 * s, 40.0 - 1.25 * i],
                    "ImageOrientationPatient": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
                    "PixelSpacing": [0.683594, 0.683594], "SliceThickness": 1.25,
                    "RescaleIntercept": -1024.0, "RescaleSlope": 1.0, "RescaleType": "HU",
                    "FrameOfReferenceUID": frame_of_reference, "BodyPartExamined": "CHEST",
                    "KVP": 120, "SliceLocation": 40.0 - 1.25 * i})))
    order = np.random.default_rng(seed).permutation(len(parts))
    return [parts[i] for i in order]


def small_instances(count: int = 7000, size: int = 64, per_series: int = 50) -> list[bytes]:
    """``count`` small MR instances, ``per_series`` a series, two series a study. One pydicom-written
    template per series; each instance replaces the fixed-length UID placeholders in its bytes."""
    root = f"1.2.826.0.1.3680043.10.1234.15{int(time.time())}"
    placeholder = b"9" * 12
    parts: list[bytes] = []
    n_series = -(-count // per_series)
    for k in range(n_series):
        template = to_bytes(make_dataset(
            study_uid=f"{root}.1{k // 2}", series_uid=f"{root}.2{k}",
            sop_uid=f"{root}.{placeholder.decode()}",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.4", modality="MR", patient_name=f"Bench^MR{k // 2}",
            patient_id=f"BENCH-MR-{k // 2}", series_number=k % 2 + 1, rows=size, columns=size, seed=k,
            extra={"ImageOrientationPatient": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0], "PixelSpacing": [3.0, 3.0],
                   "SliceThickness": 3.0, "FrameOfReferenceUID": f"{root}.3{k}"}))
        for i in range(min(per_series, count - len(parts))):
            # the instance's position: its slice of the series (a fixed-length value in the template)
            parts.append(template.replace(placeholder, f"1{k * per_series + i:011d}".encode()))
    return parts


# ---- the stack -----------------------------------------------------------------------------------------
@dataclass
class Archive:
    url: str  # DICOMweb root
    root: str  # scheme and host
    env: dict[str, str]  # the stack's service settings
    admin: str  # dicom.read, dicom.write, dicom.admin
    reader: str  # dicom.read of the two collections only, as a research team's key
    pids: Any

    def command(self, *args: str) -> str:
        done = subprocess.run([str(BIN / "dicomgw"), *args, "--url", self.url, "--token", self.admin],
                              env={**os.environ, **self.env}, capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            raise RuntimeError(f"dicomgw {' '.join(args)}: {done.stderr or done.stdout}")
        return done.stdout

    def server(self, partition: str) -> versus.Server:
        return versus.Server(partition, f"{self.url}/partitions/{partition}", self.pids,
                             {"Authorization": f"Bearer {self.admin}"}, root=self.root)

    def storage(self) -> Any:
        from dicomgw.config import StorageSettings

        return StorageSettings(backend="s3", endpoint_url=self.env["DICOMGW_STORAGE_ENDPOINT_URL"],
                               bucket=self.env["DICOMGW_STORAGE_BUCKET"],
                               access_key=self.env["DICOMGW_STORAGE_ACCESS_KEY"],
                               secret_key=self.env["DICOMGW_STORAGE_SECRET_KEY"])


@contextmanager
def stack(tmp: Path) -> Iterator[Archive]:
    from dicomgw_gateway.stack import Stack

    config = versus.stack_config(tmp)
    running = Stack(config)
    running.up()
    try:
        env = config.service_env()

        def key(name: str, scopes: str) -> str:
            done = subprocess.run([str(BIN / "dicomgw"), "keys", "create", name, "--scopes", scopes],
                                  env={**os.environ, **env}, capture_output=True, text=True, timeout=60,
                                  check=True)
            return done.stdout.strip().splitlines()[-1]

        def pids() -> list[int]:
            return sorted({q for pid in running.pids().values() for q in versus.process_tree(pid)})

        yield Archive(config.url, f"http://{config.host}:{config.port}", env,
                      key("bench-admin", "dicom.read,dicom.write,dicom.admin"),
                      key("bench-reader", f"dicom.read:{CT},dicom.read:{SMALL}"), pids)
    finally:
        running.down()


class Build:
    """Store ``parts`` into the partition ``source``, then start building the collection ``name`` of it
    with ``dicomgw share create --profile basic --wait`` (the worker tier builds it); ``wait`` for it.
    Two builds may run at once (the worker has two processes): their times are for context only."""

    def __init__(self, archive: Archive, name: str, source: str, parts: list[bytes]) -> None:
        say(f"STOW {len(parts)} instances into {source}")
        archive.command("partitions", "create", source)
        self.server, self.instances = archive.server(source), len(parts)
        self.stow_rate = asyncio.run(versus.stow(self.server, parts))
        self.server.settle()  # verified and replicated: the build reads settled originals
        say(f"share create {name} --from {source}")
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            [str(BIN / "dicomgw"), "share", "create", name, "--from", source, "--profile", "basic", "--wait",
             "--quiet", "--url", archive.url, "--token", archive.admin],
            env={**os.environ, **archive.env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def wait(self) -> dict[str, float]:
        output, _ = self.process.communicate(timeout=3600)
        seconds = time.perf_counter() - self.started
        if self.process.returncode != 0:
            raise RuntimeError(f"share create: {output}")
        self.server.settle()
        return {"stow_instances_per_s": round(self.stow_rate, 1), "build_seconds": round(seconds, 1),
                "build_instances_per_s": round(self.instances / seconds, 1)}


# ---- reading volumes: the same work for every reader ----------------------------------------------------
def volume_of(datasets: list[Any]) -> np.ndarray:
    """Slices sorted along the normal of their orientation, rescaled to real-world values, stacked
    (slice, row, column) as float32: what a training script does with a series."""
    orientation = np.asarray(datasets[0].ImageOrientationPatient, dtype=np.float64)
    normal = np.cross(orientation[:3], orientation[3:])
    ordered = sorted(datasets, key=lambda ds: float(np.asarray(ds.ImagePositionPatient, dtype=np.float64)
                                                    @ normal))
    planes = []
    for ds in ordered:
        slope, intercept = float(ds.get("RescaleSlope", 1.0)), float(ds.get("RescaleIntercept", 0.0))
        planes.append(ds.pixel_array.astype(np.float32) * np.float32(slope) + np.float32(intercept))
    return np.stack(planes)


def as_dataset_layout(volume: np.ndarray) -> np.ndarray:
    """(slice, row, column) -> the client's (column, last row first, slice)."""
    return np.transpose(volume[:, ::-1, :], (2, 1, 0))


@dataclass
class Epoch:
    seconds: float
    items: int
    megabytes: float
    # CPU seconds it took: this process (every thread), and the stack's processes (nginx, the services,
    # MinIO, PostgreSQL...): on this machine the client and the archive share the cores
    client_cpu: float = 0.0
    stack_cpu: float = 0.0

    def rates(self) -> dict[str, float]:
        return {"items_per_s": self.items / self.seconds, "mb_per_s": self.megabytes / self.seconds,
                "seconds": self.seconds, "client_cpu_s_per_item": self.client_cpu / self.items,
                "stack_cpu_s_per_item": self.stack_cpu / self.items}


def cpu_seconds(pids: list[int]) -> float:
    """User and system CPU seconds the processes have used."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / tick


class Clock:
    """Wall and CPU time (this process, the stack's processes) from now on."""

    def __init__(self, archive: Archive | None) -> None:
        self.pids = archive.pids() if archive is not None else []
        self.wall, self.client, self.stack = time.perf_counter(), time.process_time(), cpu_seconds(self.pids)

    def epoch(self, items: int, megabytes: float = 0.0) -> Epoch:
        return Epoch(time.perf_counter() - self.wall, items, megabytes, time.process_time() - self.client,
                     cpu_seconds(self.pids) - self.stack)


def local_files(dest: Path) -> Epoch:
    """Read the pulled files series by series with pydicom (the local manifest groups them)."""
    import pyarrow.parquet as pq
    import pydicom

    clock = Clock(None)
    rows = pq.read_table(dest / "manifest.parquet", columns=["series_instance_uid", "path"]).to_pylist()
    by_series: dict[str, list[Path]] = defaultdict(list)
    for row in rows:
        by_series[row["series_instance_uid"]].append(dest / row["path"])
    size = 0
    for paths in by_series.values():
        datasets = []
        for path in paths:
            data = path.read_bytes()
            size += len(data)
            datasets.append(pydicom.dcmread(io.BytesIO(data)))
        volume_of(datasets)
    return clock.epoch(len(by_series), size / 1e6)


def naive_loop(archive: Archive, collection: str) -> Epoch:
    """dicomweb-client as a script would use it: the series by QIDO-RS, each retrieved whole."""
    from dicomweb_client import DICOMwebClient

    client = DICOMwebClient(f"{archive.url}/partitions/{collection}", timeout=600,
                            headers={"Authorization": f"Bearer {archive.reader}"})
    clock = Clock(archive)
    found = client.search_for_series(get_remaining=True)
    for series in found:
        volume_of(client.retrieve_series(series["0020000D"]["Value"][0], series["0020000E"]["Value"][0]))
    epoch = clock.epoch(len(found))  # MB: the objects' sizes, set by the caller
    client._session.close()
    return epoch


def dataset_epochs(archive: Archive, collection: str, cache_dir: Path,
                   check: dict[str, np.ndarray] | None = None) -> tuple[Epoch, Epoch, dict[str, Any]]:
    """The first epoch (made with a fresh cache: construction and planning included) and the second."""
    from dicomgw_client import CollectionDataset

    clock = Clock(archive)
    dataset = CollectionDataset(archive.url, collection, level="series", cache_dir=cache_dir,
                                token=archive.reader)
    made = time.perf_counter() - clock.wall
    epochs: list[Epoch] = []
    requests_first = 0
    for _ in range(2):
        if epochs:
            clock = Clock(archive)
        for item in dataset:
            series = item["meta"]["series_instance_uid"]
            if check is not None and series in check:
                if not np.array_equal(item["image"], check.pop(series)):
                    raise RuntimeError(f"series {series}: the dataset's volume is not pydicom's")
        epochs.append(clock.epoch(len(dataset)))
        if len(epochs) == 1:
            requests_first = dataset.requests
    info = {"construction_s": made, "requests_first_epoch": requests_first,
            "requests_second_epoch": dataset.requests - requests_first, "skipped": len(dataset.skipped)}
    return epochs[0], epochs[1], info


_WORKER_DATASET: Any = None


def _worker_item(index: int) -> np.ndarray:
    """Item ``index`` of the dataset the pool was forked with: its volume, handed back to the loop."""
    image: np.ndarray = _WORKER_DATASET[index]["image"]
    return image


def workers_epoch(archive: Archive, collection: str, cache_dir: Path, workers: int = 2) -> Epoch:
    """A first epoch as a training loop with ``workers`` DataLoader worker processes runs it, without
    torch: the dataset made here (construction included), items made in forked worker processes, one
    index at a time, each volume handed back to this process (pickled, as a plain multiprocessing pool
    does; torch's DataLoader would use shared memory)."""
    import multiprocessing

    from dicomgw_client import CollectionDataset

    global _WORKER_DATASET
    clock = Clock(archive)
    dataset = CollectionDataset(archive.url, collection, level="series", cache_dir=cache_dir,
                                token=archive.reader)
    _WORKER_DATASET = dataset
    child_cpu = 0.0
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        pids = [p.pid for p in pool._pool]  # type: ignore[attr-defined]
        for image in pool.imap(_worker_item, range(len(dataset))):
            assert image.ndim == 3
        child_cpu = cpu_seconds([pid for pid in pids if pid is not None])
        epoch = clock.epoch(len(dataset))
    epoch.client_cpu += child_cpu
    _WORKER_DATASET = None
    return epoch


def epoch_figures(archive: Archive, local: Path, tmp: Path, rounds: int) -> dict[str, Any]:
    """Naive loop, dataset (two epochs) and local files, taking turns; medians over the rounds."""
    import pyarrow.parquet as pq
    import pydicom

    sizes = sum(p.stat().st_size for p in local.rglob("*.dcm"))
    # one series read by hand from the local files: the dataset must give the same voxels
    rows = pq.read_table(local / "manifest.parquet", columns=["series_instance_uid", "path"]).to_pylist()
    first = rows[0]["series_instance_uid"]
    check = {first: as_dataset_layout(volume_of(
        [pydicom.dcmread(local / r["path"]) for r in rows if r["series_instance_uid"] == first]))}
    runs: dict[str, list[dict[str, float]]] = defaultdict(list)
    info: dict[str, Any] = {}
    for n in range(rounds):
        say(f"epochs of {CT}, round {n + 1} of {rounds}")
        naive = naive_loop(archive, CT)
        naive.megabytes = sizes / 1e6  # the objects' bytes, the same for every reader
        runs["naive"].append(naive.rates())
        cache = tmp / f"cache-{n}"
        one, two, info = dataset_epochs(archive, CT, cache, check if n == 0 else None)
        one.megabytes = two.megabytes = sizes / 1e6
        runs["first"].append(one.rates())
        runs["second"].append(two.rates())
        shutil.rmtree(cache)
        parallel = workers_epoch(archive, CT, cache)
        parallel.megabytes = sizes / 1e6
        runs["workers"].append(parallel.rates())
        shutil.rmtree(cache)
        runs["local"].append(local_files(local).rates())
    out: dict[str, Any] = {name: {k: round(statistics.median(r[k] for r in values), 3) for k in values[0]}
                           for name, values in runs.items()}
    out["rounds"] = rounds
    out["per_round_seconds"] = {name: [round(r["seconds"], 2) for r in values]
                                for name, values in runs.items()}
    out["load_average"] = [round(x, 2) for x in os.getloadavg()]
    out["dataset"] = {k: round(v, 3) if isinstance(v, float) else v for k, v in info.items()}
    out["first_over_naive"] = round(out["first"]["items_per_s"] / out["naive"]["items_per_s"], 2)
    out["workers_over_naive"] = round(out["workers"]["items_per_s"] / out["naive"]["items_per_s"], 2)
    out["local_over_second"] = round(out["local"]["items_per_s"] / out["second"]["items_per_s"], 2)
    out["goal_first"] = out["first_over_naive"] >= GOAL_FIRST_OVER_NAIVE
    out["goal_second"] = out["local_over_second"] <= GOAL_LOCAL_OVER_SECOND
    return out


# ---- pulling ---------------------------------------------------------------------------------------------
def pull_concurrency() -> int:
    """What ``dicomgw-client pull`` uses when not told (its ``--concurrency`` default is pull()'s)."""
    from dicomgw_client.pull import pull

    return int(inspect.signature(pull).parameters["concurrency"].default)


def pull_once(archive: Archive, collection: str, dest: Path) -> tuple[float, int, int]:
    """(seconds, files, bytes) of one pull into the empty folder ``dest``."""
    from dicomgw_client.pull import pull

    t0 = time.perf_counter()
    result = pull(archive.url, collection, dest, token=archive.reader)
    seconds = time.perf_counter() - t0
    if result.fetched != result.instances:
        raise RuntimeError(f"pull of {collection}: {result.fetched} of {result.instances} fetched")
    return seconds, result.instances, result.bytes_fetched


async def collection_keys(archive: Archive, collection: str, sha256s: set[str]) -> list[str]:
    """The collection partition's objects that are the manifest's (their keys end in their SHA-256)."""
    from dicomgw.storage.s3 import S3Store

    store = await S3Store.open(archive.storage())
    try:
        keys = {}
        async for key in store.list_keys(f"partitions/{collection}/originals/"):
            sha = key.rsplit("/", 1)[-1].removesuffix(".dcm")
            if sha in sha256s:
                keys[sha] = key
    finally:
        await store.close()
    if set(keys) != sha256s:
        raise RuntimeError(f"{len(sha256s - set(keys))} objects of {collection}'s manifest not in the bucket")
    return sorted(keys.values())


def copied(dest: Path, key: str, data: bytes, made: set[Path]) -> int:
    """``data`` of the object ``key`` written where a pull puts it: originals/{study}/{series}/{sop}/
    {sha256}.dcm -> dest/{study}/{series}/{sop}.dcm (``made``: the folders made so far). Its size."""
    path = dest / (key.split("/originals/", 1)[1].rsplit("/", 1)[0] + ".dcm")
    if path.parent not in made:
        path.parent.mkdir(parents=True, exist_ok=True)
        made.add(path.parent)
    path.write_bytes(data)
    return len(data)


async def raw_copy(archive: Archive, keys: list[str], dest: Path, concurrency: int) -> tuple[float, int]:
    """(seconds, bytes) of GETting every key from MinIO, ``concurrency`` at once, each into a file."""
    from dicomgw.storage.s3 import S3Store

    store = await S3Store.open(archive.storage())
    sem = asyncio.Semaphore(concurrency)
    made: set[Path] = set()

    async def one(key: str) -> int:
        async with sem:
            data = await store.read(key)
        return copied(dest, key, data, made)

    try:
        t0 = time.perf_counter()
        size = sum(await asyncio.gather(*(one(k) for k in keys)))
        return time.perf_counter() - t0, size
    finally:
        await store.close()


def presigned_copy(archive: Archive, keys: list[str], dest: Path, concurrency: int) -> tuple[float, int]:
    """(seconds, bytes) of GETting every key from MinIO by a presigned URL (signed beforehand, not timed)
    with the standard library's http.client on kept-alive connections, ``concurrency`` threads, each
    object into a file: the least a client can do to copy the objects out of the store."""
    from concurrent.futures import ThreadPoolExecutor

    from dicomgw.storage.presign import Presigner
    from dicomgw_client.api import Store

    settings = archive.storage()
    signer = Presigner(settings.endpoint_url or "", settings.region, settings.access_key or "",
                       settings.secret_key or "")
    urls = [signer.url(settings.bucket, key, 900) for key in keys]
    store = Store(60.0, concurrency, lambda: None)
    made: set[Path] = set()

    def one(pair: tuple[str, str]) -> int:
        key, url = pair
        data = store.get(url)
        if data is None:
            raise RuntimeError(f"{key}: not given by the store")
        return copied(dest, key, data, made)

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        t0 = time.perf_counter()
        size = sum(pool.map(one, zip(keys, urls, strict=True)))
        seconds = time.perf_counter() - t0
    store.close()
    return seconds, size


def pull_figures(archive: Archive, collection: str, tmp: Path, rounds: int,
                 keep: Path | None = None) -> dict[str, Any]:
    """Pull against the raw copies (aiobotocore, and presigned URLs read with http.client), taking turns;
    the best round of each. ``keep``: a pulled folder left."""
    import pyarrow.parquet as pq

    concurrency = pull_concurrency()
    pulled: list[tuple[float, int, int]] = []
    copied: list[tuple[float, int]] = []
    presigned: list[tuple[float, int]] = []
    keys: list[str] = []
    for n in range(rounds):
        say(f"pull {collection} and its raw copy, round {n + 1} of {rounds}")
        dest = tmp / f"pull-{collection}-{n}"
        pulled.append(pull_once(archive, collection, dest))
        if not keys:
            sha256s = set(pq.read_table(dest / "manifest.parquet", columns=["sha256"])["sha256"].to_pylist())
            keys = asyncio.run(collection_keys(archive, collection, sha256s))
        raw = tmp / f"raw-{collection}-{n}"
        copied.append(asyncio.run(raw_copy(archive, keys, raw, concurrency)))
        shutil.rmtree(raw)
        presigned.append(presigned_copy(archive, keys, raw, concurrency))
        shutil.rmtree(raw)
        if keep is not None and n == 0:
            dest.rename(keep)
        else:
            shutil.rmtree(dest)
    seconds, files, size = min(pulled)
    raw_seconds, raw_size = min(copied)
    plain_seconds, plain_size = min(presigned)
    if not raw_size == plain_size == size:
        raise RuntimeError(f"{collection}: the pull fetched {size} bytes, the raw copies {raw_size} and "
                           f"{plain_size}")
    out = {"files": files, "megabytes": round(size / 1e6, 1), "concurrency": concurrency, "rounds": rounds,
           "pull_files_per_s": round(files / seconds, 1), "pull_mb_per_s": round(size / 1e6 / seconds, 1),
           "raw_files_per_s": round(files / raw_seconds, 1),
           "raw_mb_per_s": round(size / 1e6 / raw_seconds, 1),
           "pull_over_raw": round(raw_seconds / seconds, 2),
           "presigned_files_per_s": round(files / plain_seconds, 1),
           "presigned_mb_per_s": round(size / 1e6 / plain_seconds, 1),
           "pull_over_presigned": round(plain_seconds / seconds, 2)}
    # the goal is against a raw S3 copy (aiobotocore); the presigned copy is the least a client
    # can do (no check of the bytes, no resumable placement), printed beside it
    out["goal"] = out["pull_over_raw"] >= GOAL_PULL_OVER_RAW
    return out


# ---- the run -------------------------------------------------------------------------------------------
def run(tmp: Path, ct_series_count: int = 3, slices: int = 200, small: int = 7000, rounds: int = 3,
        pull_rounds: int = 2) -> dict[str, Any]:
    tmp.mkdir(parents=True, exist_ok=True)
    say("generating the corpora")
    ct = ct_series(ct_series_count, slices)
    tiny = small_instances(small)
    results: dict[str, Any] = {
        "ct": {"series": ct_series_count, "slices": slices, "instances": len(ct),
               "megabytes": round(sum(map(len, ct)) / 1e6, 1)},
        "small": {"instances": len(tiny), "megabytes": round(sum(map(len, tiny)) / 1e6, 1)},
    }
    say("starting the local stack")
    with stack(tmp) as archive:
        # the CT collection is built while the small instances are stored, then both builds run at once
        ct_build = Build(archive, CT, CT_SOURCE, ct)
        small_build = Build(archive, SMALL, SMALL_SOURCE, tiny)
        del ct, tiny
        results["ct"]["build"] = ct_build.wait()
        say(f"{CT} built")
        results["small"]["build"] = small_build.wait()
        say(f"{SMALL} built")
        local = tmp / "local-ct"
        results["pull"] = {"ct": pull_figures(archive, CT, tmp, pull_rounds, keep=local),
                           "small": pull_figures(archive, SMALL, tmp, pull_rounds)}
        results["epochs"] = epoch_figures(archive, local, tmp, rounds)
    return results


def table(results: dict[str, Any]) -> str:
    ct, small, e, pulls = results["ct"], results["small"], results["epochs"], results["pull"]

    def met(ok: bool) -> str:
        return "met" if ok else "**missed**"

    def cpu(row: dict[str, float]) -> str:
        return f"{row['client_cpu_s_per_item']:.2f} + {row['stack_cpu_s_per_item']:.2f}"

    lines = [
        f"bench-ct: {ct['series']} CT series x {ct['slices']} slices 512x512 16-bit ({ct['instances']} "
        f"instances, {ct['megabytes']} MB; STOW {ct['build']['stow_instances_per_s']}/s, "
        f"collection built in {ct['build']['build_seconds']} s); bench-small: {small['instances']} "
        f"64x64 MR ({small['megabytes']} MB; STOW {small['build']['stow_instances_per_s']}/s, built in "
        f"{small['build']['build_seconds']} s; the two builds overlap). Local stack with MinIO; medians of "
        f"{e['rounds']} rounds (epochs), best of {pulls['ct']['rounds']} (pulls).",
        "",
        "| reader (bench-ct, level=\"series\") | volumes/s | MB/s | CPU s/volume: client + stack | ratio "
        "| goal |",
        "|---|---|---|---|---|---|",
        f"| naive dicomweb-client loop (QIDO + retrieve_series + pydicom) | {e['naive']['items_per_s']:.3g} "
        f"| {e['naive']['mb_per_s']:.1f} | {cpu(e['naive'])} | | |",
        f"| CollectionDataset, first epoch (fresh cache, construction included) | "
        f"{e['first']['items_per_s']:.3g} | {e['first']['mb_per_s']:.1f} | {cpu(e['first'])} | "
        f"{e['first_over_naive']}x naive | >= {GOAL_FIRST_OVER_NAIVE}x: {met(e['goal_first'])} |",
        f"| the same, 2 worker processes (as a DataLoader; volumes pickled back) | "
        f"{e['workers']['items_per_s']:.3g} | {e['workers']['mb_per_s']:.1f} | {cpu(e['workers'])} | "
        f"{e['workers_over_naive']}x naive | |",
        f"| CollectionDataset, second epoch (cache) | {e['second']['items_per_s']:.3g} | "
        f"{e['second']['mb_per_s']:.1f} | {cpu(e['second'])} | local/second {e['local_over_second']} | "
        f"<= {GOAL_LOCAL_OVER_SECOND}: {met(e['goal_second'])} |",
        f"| pydicom from local files (the same objects, pulled) | {e['local']['items_per_s']:.3g} | "
        f"{e['local']['mb_per_s']:.1f} | {cpu(e['local'])} | | |",
        "",
        f"| pull (concurrency {pulls['ct']['concurrency']}) | files | MB | pull files/s, MB/s | "
        "raw copy, aiobotocore: files/s, MB/s | raw copy, presigned + http.client: files/s, MB/s | "
        "pull/raw (aiobotocore, presigned) | goal: pull/raw S3 copy (aiobotocore) >= 0.8 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in (("bench-ct (large files)", pulls["ct"]), ("bench-small (small files)", pulls["small"])):
        lines.append(f"| {name} | {row['files']} | {row['megabytes']} | {row['pull_files_per_s']}, "
                     f"{row['pull_mb_per_s']} | {row['raw_files_per_s']}, {row['raw_mb_per_s']} | "
                     f"{row['presigned_files_per_s']}, {row['presigned_mb_per_s']} | "
                     f"{row['pull_over_raw']}, {row['pull_over_presigned']} | {met(row['goal'])} |")
    d = e["dataset"]
    lines.append("")
    lines.append(f"dataset: construction {d['construction_s']} s of the first epoch; requests "
                 f"{d['requests_first_epoch']} in the first epoch, {d['requests_second_epoch']} in the "
                 f"second. Seconds per round: {e['per_round_seconds']}; load average at the end "
                 f"{e['load_average']} ({os.cpu_count()} cores, shared with the stack).")
    return "\n".join(lines)


def main() -> int:
    import argparse
    import json

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ct-series", type=int, default=3, help="CT series of --slices slices (default 3)")
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--small", type=int, default=7000, help="small instances (default 7000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the epoch figures")
    parser.add_argument("--pull-rounds", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dicomgw-bench-datasets-") as tmp:
        results = run(Path(tmp), args.ct_series, args.slices, args.small, args.rounds, args.pull_rounds)
    print(table(results))
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
