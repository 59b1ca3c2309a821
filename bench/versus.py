"""The gateway against Orthanc's DICOMweb plugin, figure by figure, in one run on one machine.

Both servers get the same generated corpus through the same STOW-RS requests (4 clients at once, 50
instances per request), then answer the same QIDO-RS searches, metadata, whole-study and frame
requests. Each figure is printed as gateway/Orthanc and, where a raw store exists, gateway/raw:

- ``clinical``: CT, MR and PET studies (a 200-slice CT among them), a few hundred MB;
- ``index``: many small instances (default 90,000 in 1,500 studies), where per-instance costs rule.

The gateway is the embedded one (SQLite, local folder) or, with ``--stack``, the local distributed
stack of `make up` (nginx, split services, PostgreSQL, MinIO with a replica, the worker running).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pydicom.uid import CTImageStorage, MRImageStorage, PositronEmissionTomographyImageStorage

from tests.dicomdata import make_dataset, multipart_related, to_bytes

CLIENTS = 4
PER_REQUEST = 50
ROUNDS = 40
WHOLE = {"accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
OCTETS = {"accept": "multipart/related; type=application/octet-stream; transfer-syntax=*"}


@dataclass
class Corpus:
    name: str
    parts: list[bytes]
    big_study: str  # the study whose retrieve, metadata, instances and frames are measured
    frames: list[tuple[str, str]]  # (series, sop) of the big study, in order
    queries: dict[str, tuple[str, dict[str, str]]] = field(default_factory=dict)

    @property
    def megabytes(self) -> float:
        return sum(map(len, self.parts)) / 2**20


def _uid(root: str, n: int) -> str:
    return f"{root}.{n}"


def clinical(seed: int = 7) -> Corpus:
    """A 200-slice CT and a 300-slice CT (512x512), an MR of 3x80 (256x256), a PET of 180 (192x192).

    Patients are named so that PatientName=K* finds some; study dates spread over three years.
    """
    root = f"1.2.826.0.1.3680043.10.1234.9{seed}{int(time.time())}"
    shapes = [  # (modality, sop class, series, per series, rows, patient, date)
        ("CT", CTImageStorage, 1, 200, 512, "Kowalski^Anna", "20230105"),
        ("CT", CTImageStorage, 1, 300, 512, "Meyer^Hans", "20240220"),
        ("MR", MRImageStorage, 3, 80, 256, "Kim^Jae", "20220311"),
        ("PT", PositronEmissionTomographyImageStorage, 1, 180, 192, "Dubois^Marie", "20250730"),
    ]
    parts: list[bytes] = []
    frames: list[tuple[str, str]] = []
    n = 0
    for s, (modality, sop_class, n_series, per_series, size, patient, date) in enumerate(shapes):
        study = _uid(root, 1000 + s)
        for k in range(n_series):
            series = _uid(root, 2000 + s * 10 + k)
            for i in range(per_series):
                n += 1
                sop = _uid(root, 100000 + n)
                parts.append(to_bytes(make_dataset(
                    study_uid=study, series_uid=series, sop_uid=sop, sop_class_uid=sop_class,
                    modality=modality, patient_name=patient, patient_id=f"P{s}", study_date=date,
                    accession=f"A{s}", series_number=k + 1, instance_number=i + 1, rows=size,
                    columns=size, seed=n)))
                if s == 0:
                    frames.append((series, sop))
    corpus = Corpus("clinical", parts, _uid(root, 1000), frames)
    corpus.queries = _queries(corpus.big_study)
    return corpus


def index_scale(studies: int = 1500, per_study: int = 60) -> Corpus:
    """``studies`` x ``per_study`` small (32x32) CT instances, two series per study.

    One pydicom-written template per study; each instance replaces the fixed-length SOP Instance
    UID placeholder in its bytes, which makes 90,000 instances in seconds rather than minutes.
    """
    root = f"1.2.826.0.1.3680043.10.1234.8{int(time.time())}"
    placeholder = "9" * 12
    parts: list[bytes] = []
    frames: list[tuple[str, str]] = []
    patients = ["Kowalski", "Meyer", "Kim", "Dubois", "Rossi", "Nakamura", "Silva", "Okafor"]
    for s in range(studies):
        study = _uid(root, s)
        series_uids = [_uid(root, 10**7 + s * 10 + k) for k in range(2)]
        templates = []
        for k, series in enumerate(series_uids):
            data = to_bytes(make_dataset(
                study_uid=study, series_uid=series, sop_uid=f"{root}.{placeholder}",
                patient_name=f"{patients[s % len(patients)]}^{s}", patient_id=f"P{s}",
                study_date=f"{2015 + s % 10}{1 + s % 12:02d}{1 + s % 28:02d}", accession=f"A{s}",
                series_number=k + 1, rows=32, columns=32, seed=s))
            templates.append(data)
        for i in range(per_study):
            k = i % 2
            sop_suffix = f"1{s * per_study + i:011d}"  # same length as the placeholder, no leading 0
            parts.append(templates[k].replace(placeholder.encode(), sop_suffix.encode()))
            if s == 0:
                frames.append((series_uids[k], f"{root}.{sop_suffix}"))
    corpus = Corpus("index", parts, _uid(root, 0), frames)
    corpus.queries = _queries(corpus.big_study)
    return corpus


def _queries(study: str) -> dict[str, tuple[str, dict[str, str]]]:
    return {
        "QIDO all studies": ("/studies", {}),
        "QIDO PatientName=K*": ("/studies", {"PatientName": "K*"}),
        "QIDO StudyDate range": ("/studies", {"StudyDate": "20220101-20231231"}),
        "QIDO series of a study": (f"/studies/{study}/series", {}),
        "QIDO instances of the big study": (f"/studies/{study}/instances", {}),
    }


# -- the servers ------------------------------------------------------------------------------------
@dataclass
class Server:
    name: str
    url: str  # the DICOMweb root
    pids: Callable[[], list[int]]
    headers: dict[str, str] = field(default_factory=dict)
    # the archive's root URL, for /admin/status: reads are measured once every stored instance is
    # verified (and replicated), so that background work does not weigh on either side's figures
    root: str | None = None
    # the server's cheapest answer (a health check): what any request costs at least
    floor: str | None = None

    def settle(self, timeout: float = 1800) -> None:
        if self.root is None:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = httpx.get(f"{self.root}/admin/status", headers=self.headers, timeout=60).json()
            replica = status.get("replica") or {}
            if not status.get("pending") and not replica.get("pending"):
                return
            time.sleep(1)
        raise RuntimeError(f"{self.name} did not verify the corpus within {timeout} s")


def rss_mb(pids: list[int]) -> dict[str, float]:
    """Resident memory now and at peak (VmHWM), summed over the processes."""
    now = peak = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                now += int(line.split()[1])
            elif line.startswith("VmHWM:"):
                peak += int(line.split()[1])
    return {"rss_mb": round(now / 1024, 1), "peak_rss_mb": round(peak / 1024, 1)}


def process_tree(pid: int) -> list[int]:
    out = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            out.extend(process_tree(int(child)))
    return sorted(set(out))


@contextmanager
def orthanc(tmp: Path) -> Iterator[Server]:
    from tests.fixtures.orthanc import start_orthanc

    server = start_orthanc(tmp / "orthanc")
    try:
        yield Server("orthanc", f"{server.url}/dicom-web", lambda: [server.process.pid],
                     floor=f"{server.url}/system")
    finally:
        server.process.terminate()
        server.process.wait(timeout=60)


@contextmanager
def embedded(tmp: Path, env: dict[str, str] | None = None) -> Iterator[Server]:
    from tests.fixtures.gateway import start_gateway

    gw = start_gateway(tmp / "gateway", {"DICOMGW_HTTP_WORKERS": "0", **(env or {})})  # as `make run`
    try:
        yield Server("gateway", gw.url, lambda: process_tree(gw.process.pid), root=gw.root,
                     floor=f"{gw.root}/healthz")
    finally:
        gw.stop()


# -- the figures -------------------------------------------------------------------------------------
async def stow(server: Server, parts: list[bytes]) -> float:
    """Instances per second: CLIENTS clients, each sending PER_REQUEST instances per request."""
    bodies = [multipart_related(parts[i : i + PER_REQUEST]) for i in range(0, len(parts), PER_REQUEST)]
    queue: asyncio.Queue[tuple[bytes, str]] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    limits = httpx.Limits(max_connections=CLIENTS)
    async with httpx.AsyncClient(timeout=600, headers=server.headers, limits=limits) as client:

        async def sender() -> None:
            while not queue.empty():
                body, ct = queue.get_nowait()
                r = await client.post(f"{server.url}/studies", content=body,
                                      headers={"content-type": ct, "accept": "application/dicom+json"})
                if r.status_code != 200:
                    raise RuntimeError(f"{server.name} STOW answered {r.status_code}: {r.text[:300]}")

        t0 = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(CLIENTS)))
        return len(parts) / (time.perf_counter() - t0)


def p(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def _get(client: httpx.Client, url: str, params: dict[str, str] | None = None,
         headers: dict[str, str] | None = None) -> tuple[float, int]:
    """Seconds to the last byte of one GET, and the bytes received."""
    t0 = time.perf_counter()
    size = 0
    with client.stream("GET", url, params=params, headers=headers) as r:
        r.raise_for_status()
        for chunk in r.iter_raw():
            size += len(chunk)
    return time.perf_counter() - t0, size


def read_figures(servers: list[Server], corpus: Corpus) -> dict[str, dict[str, float]]:
    """Latencies (ms) and whole-study throughput (MB/s) of the same requests to every server.

    The servers take turns request by request, so that a slow moment of the machine (this is a
    shared VM) weighs on both alike rather than on whichever was being measured then.
    """
    out: dict[str, dict[str, float]] = {s.name: {} for s in servers}
    clients = {s.name: httpx.Client(timeout=600, headers=s.headers) for s in servers}

    def alternate(path: str, rounds: int, params: dict[str, str] | None = None,
                  headers: dict[str, str] | None = None) -> dict[str, list[tuple[float, int]]]:
        times: dict[str, list[tuple[float, int]]] = {s.name: [] for s in servers}
        for n in range(rounds + 2):
            for s in servers:
                timing = _get(clients[s.name], s.url + path, params, headers)
                if n >= 2:  # the first two warm caches and connections
                    times[s.name].append(timing)
        return times

    try:
        if all(s.floor for s in servers):
            floors: dict[str, list[float]] = {s.name: [] for s in servers}
            for n in range(ROUNDS + 2):
                for s in servers:
                    assert s.floor is not None
                    timing, _ = _get(clients[s.name], s.floor)
                    if n >= 2:
                        floors[s.name].append(timing)
            for server, values in floors.items():
                out[server]["empty answer (health check) p50 ms"] = statistics.median(values) * 1000
        for name, (path, params) in corpus.queries.items():
            for server, t in alternate(path, ROUNDS, params).items():
                out[server][f"{name} p95 ms"] = p([s for s, _ in t], 95) * 1000
        for server, t in alternate(f"/studies/{corpus.big_study}/metadata", 10).items():
            out[server]["study metadata p50 ms"] = statistics.median(s for s, _ in t) * 1000
        frames: dict[str, list[float]] = {s.name: [] for s in servers}
        for series, sop in corpus.frames:
            path = f"/studies/{corpus.big_study}/series/{series}/instances/{sop}/frames/1"
            for server, t in alternate(path, 1, headers=OCTETS).items():
                frames[server] += [s for s, _ in t]
        for server, values in frames.items():
            out[server]["one frame p50 ms"] = statistics.median(values) * 1000
        for server, t in alternate(f"/studies/{corpus.big_study}", 3, headers=WHOLE).items():
            out[server]["whole-study retrieve MB/s"] = max(n / 2**20 / s for s, n in t)
    finally:
        for client in clients.values():
            client.close()
    return out


# -- raw stores: the least any archive must do with the same bytes ----------------------------------
def raw_local_write(parts: list[bytes], folder: Path) -> float:
    """Instances per second of writing each file, fsyncing it and its folder (4 threads, as 4 clients)."""
    from concurrent.futures import ThreadPoolExecutor

    folder.mkdir(parents=True, exist_ok=True)

    def one(i: int) -> None:
        tmp = folder / f"{i}.tmp"
        with open(tmp, "wb") as f:
            f.write(parts[i])
            hashlib.sha256(parts[i])
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, folder / f"{i}.dcm")
        fd = os.open(folder, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(one, range(len(parts))))
    return len(parts) / (time.perf_counter() - t0)


def raw_local_read(files: list[Path]) -> float:
    """MB/s of reading the files (page cache as warm as the servers')."""
    t0 = time.perf_counter()
    size = 0
    for path in files:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                size += len(chunk)
    return size / 2**20 / (time.perf_counter() - t0)


def study_files(data_dir: Path, study: str) -> list[Path]:
    return sorted((data_dir / "objects" / "originals" / study).rglob("*.dcm"))


def _spool(parts: list[bytes], folder: Path) -> list[tuple[Path, bytes, int]]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, data in enumerate(parts):
        path = folder / f"{i}.dcm"
        path.write_bytes(data)
        out.append((path, hashlib.sha256(data).digest(), len(data)))
    return out


async def raw_s3(settings: Any, parts: list[bytes], folder: Path) -> tuple[float, float]:
    """(PUT instances/s with SHA-256, GET MB/s) against the same MinIO, 8 requests at once."""
    from dicomgw.storage.s3 import S3Store

    paths = _spool(parts, folder)
    store = await S3Store.open(settings)
    sem = asyncio.Semaphore(8)

    async def put(i: int) -> None:
        path, digest, size = paths[i]
        async with sem:
            await store.put_file(f"raw/{i}.dcm", path, sha256=digest, size=size)

    async def get(i: int) -> int:
        async with sem:
            return len(await store.read(f"raw/{i}.dcm"))

    try:
        t0 = time.perf_counter()
        await asyncio.gather(*(put(i) for i in range(len(paths))))
        put_rate = len(paths) / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        size = sum(await asyncio.gather(*(get(i) for i in range(200))))
        get_rate = size / 2**20 / (time.perf_counter() - t0)
    finally:
        await store.close()
    return put_rate, get_rate


# -- one comparison ---------------------------------------------------------------------------------
def compare(corpus: Corpus, gateway: Server, orthanc_server: Server,
            raw: Callable[[], dict[str, float]], ohif_tmp: Path | None = None) -> dict[str, Any]:
    """Every figure for both servers; the ratios say how the gateway stands."""
    result: dict[str, Any] = {"corpus": corpus.name, "instances": len(corpus.parts),
                              "megabytes": round(corpus.megabytes, 1)}
    figures: dict[str, dict[str, float]] = {}
    for server in (orthanc_server, gateway):
        rate = asyncio.run(stow(server, corpus.parts))
        figures[server.name] = {"STOW instances/s": rate, **rss_mb(server.pids())}
        server.settle()
    for name, values in read_figures([orthanc_server, gateway], corpus).items():
        figures[name].update(values)
    if ohif_tmp is not None:
        from bench.ohif import first_image_seconds

        seconds = first_image_seconds({s.name: (s.url, s.headers) for s in (orthanc_server, gateway)},
                                      corpus.big_study, ohif_tmp)
        for name, value in seconds.items():
            figures[name]["OHIF first image of the big study s"] = value
    raw_figures = raw()
    rows = []
    for name, value in figures["gateway"].items():
        if "rss" in name:
            continue
        theirs = figures["orthanc"][name]
        row = {"figure": name, "orthanc": round(theirs, 2), "gateway": round(value, 2),
               "gateway/orthanc": round(value / theirs, 2) if theirs else None}
        if name in raw_figures:
            row["raw store"] = round(raw_figures[name], 2)
            row["gateway/raw"] = round(value / raw_figures[name], 2)
        rows.append(row)
    result["figures"] = rows
    result["memory"] = {s: {k: v for k, v in f.items() if "rss" in k} for s, f in figures.items()}
    return result


def run_embedded(corpus: Corpus, tmp: Path, env: dict[str, str] | None = None,
                 ohif: bool = False) -> dict[str, Any]:
    with orthanc(tmp) as o, embedded(tmp, env) as gw:
        data_dir = tmp / "gateway"

        def raw() -> dict[str, float]:
            return {"STOW instances/s": raw_local_write(corpus.parts, tmp / "raw"),
                    "whole-study retrieve MB/s": raw_local_read(study_files(data_dir, corpus.big_study))}

        return compare(corpus, gw, o, raw, tmp / "ohif" if ohif else None)


def stack_config(tmp: Path) -> Any:
    """A local stack's configuration on free ports, its run folder in ``tmp``."""
    from dicomgw_gateway.stack import StackConfig, free_port

    return StackConfig(
        run_dir=tmp / "stack", port=free_port(), minio_port=free_port(), replica_port=free_port(),
        redis_port=free_port(), postgres_port=free_port(), ingest_port=free_port(),
        query_port=free_port(), retrieve_port=free_port(), worker_metrics_port=free_port(),
        dimse_port=free_port(), minio_user="bench", minio_password="bench-secret-key")


def run_stack(corpus: Corpus, tmp: Path, ohif: bool = False) -> dict[str, Any]:
    import subprocess
    import sys

    from dicomgw.config import StorageSettings
    from dicomgw_gateway.stack import Stack

    config = stack_config(tmp)
    stack = Stack(config)
    stack.up()
    try:
        done = subprocess.run(
            [str(Path(sys.executable).parent / "dicomgw"), "keys", "create", "bench", "--scopes",
             "dicom.read,dicom.write,dicom.admin"], env={**os.environ, **config.service_env()},
            capture_output=True, text=True, timeout=60, check=True)
        key = done.stdout.strip().splitlines()[-1]

        def pids() -> list[int]:
            return sorted({q for pid in stack.pids().values() for q in process_tree(pid)})

        gw = Server("gateway", config.url, pids, {"Authorization": f"Bearer {key}"},
                    root=f"http://{config.host}:{config.port}",
                    floor=f"http://{config.host}:{config.port}/healthz")
        env = config.service_env()
        s3 = StorageSettings(backend="s3", endpoint_url=env["DICOMGW_STORAGE_ENDPOINT_URL"],
                             bucket="bench-raw",
                        access_key=env["DICOMGW_STORAGE_ACCESS_KEY"],
                        secret_key=env["DICOMGW_STORAGE_SECRET_KEY"])

        def raw() -> dict[str, float]:
            put_rate, get_rate = asyncio.run(raw_s3(s3, corpus.parts, tmp / "raw"))
            return {"STOW instances/s": put_rate, "whole-study retrieve MB/s": get_rate}

        with orthanc(tmp) as o:
            return compare(corpus, gw, o, raw, tmp / "ohif" if ohif else None)
    finally:
        stack.down()


def table(result: dict[str, Any]) -> str:
    lines = [f"{result['corpus']}: {result['instances']} instances, {result['megabytes']} MB",
             "| figure | Orthanc | dicomgw | dicomgw/Orthanc | raw store | dicomgw/raw |",
             "|---|---|---|---|---|---|"]
    for row in result["figures"]:
        lines.append(f"| {row['figure']} | {row['orthanc']} | {row['gateway']} | "
                     f"{row['gateway/orthanc']}x | {row.get('raw store', '')} | "
                     f"{str(row['gateway/raw']) + 'x' if 'gateway/raw' in row else ''} |")
    mem = result["memory"]
    lines.append(f"peak RSS MB: Orthanc {mem['orthanc']['peak_rss_mb']}, "
                 f"dicomgw {mem['gateway']['peak_rss_mb']} (all its processes)")
    return "\n".join(lines)
