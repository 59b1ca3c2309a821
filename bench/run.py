"""dicomgw benchmarks: every figure is a ratio against a baseline measured in the same run.

    make bench                      # or: .venv/bin/python bench/run.py [--instances N] [--s3]

- STOW-RS into the embedded gateway vs the minimum any durable store must do with the same bytes
  (write each file, fsync, rename) — the gateway's overhead for parsing, hashing and indexing.
- STOW-RS into a gateway backed by MinIO vs PUTting the same objects to the same MinIO with
  aiobotocore directly (--s3; needs `make tools-minio`).
- WADO-RS frames (what OHIF fetches per image) vs reading the same bytes from the original file.
- QIDO-RS study search with computed attributes vs the raw SQLite scan of the same rows.
- De-identification (dicomgw.deid, read + profile + write) instances per second vs STOW-RS of the same
  instances into the embedded gateway.
- A research collection of those instances built by the embedded gateway's worker (read each original,
  check its SHA-256, de-identify, store and index it in the collection's partition, write the
  manifest): instances per second vs STOW-RS of the same instances.
- WADO-RS frames per second with the audit trail on vs off (the same data, eight frames in flight
  as a viewer has; alternating runs so that drift does not favour either).
Results are printed and written to bench/results/latest.json (git-ignored).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.dicomdata import make_instance, multipart_related, uid  # noqa: E402
from tests.fixtures.gateway import start_gateway  # noqa: E402


def corpus(n: int, studies: int = 10) -> list[bytes]:
    study_uids = [uid() for _ in range(studies)]
    series_uids = [uid() for _ in range(studies)]
    return [
        make_instance(study_uid=study_uids[i % studies], series_uid=series_uids[i % studies],
                      rows=256, columns=256, instance_number=i, seed=i,
                      patient_name=f"Bench^Patient{i % studies}")
        for i in range(n)
    ]


def raw_durable_write(parts: list[bytes], folder: Path) -> float:
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for i, data in enumerate(parts):
        tmp = folder / f"{i}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, folder / f"{i}.dcm")
    fd = os.open(folder, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    return time.perf_counter() - t0


async def stow_all(url: str, parts: list[bytes], batch: int = 25, concurrency: int = 2) -> float:
    batches = [parts[i : i + batch] for i in range(0, len(parts), batch)]
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=300) as client:

        async def send(chunk: list[bytes]) -> None:
            body, ct = multipart_related(chunk)
            async with sem:
                r = await client.post(f"{url}/studies", content=body, headers={"content-type": ct})
                r.raise_for_status()

        t0 = time.perf_counter()
        await asyncio.gather(*(send(b) for b in batches))
        return time.perf_counter() - t0


async def frames_vs_raw(url: str, data_dir: Path, rounds: int = 200) -> dict[str, float]:
    async with httpx.AsyncClient(timeout=60) as client:
        studies = (await client.get(f"{url}/studies", params={"limit": 1})).json()
        study = studies[0]["0020000D"]["Value"][0]
        instances = (await client.get(f"{url}/studies/{study}/instances")).json()
        targets = [(i["0020000E"]["Value"][0], i["00080018"]["Value"][0]) for i in instances][:rounds]
        accept = {"accept": "multipart/related; type=application/octet-stream; transfer-syntax=*"}
        t0 = time.perf_counter()
        for series, sop in targets:
            r = await client.get(f"{url}/studies/{study}/series/{series}/instances/{sop}/frames/1",
                                 headers=accept)
            r.raise_for_status()
        gateway = (time.perf_counter() - t0) / len(targets)
    files = {p.parent.name: p for p in (data_dir / "objects" / "originals").rglob("*.dcm")}
    t0 = time.perf_counter()
    for _, sop in targets:
        with open(files[sop], "rb") as f:  # noqa: ASYNC230 - the raw baseline is meant to block
            f.seek(-256 * 256 * 2, os.SEEK_END)
            f.read(256 * 256 * 2)
    raw = (time.perf_counter() - t0) / len(targets)
    return {"gateway_s_per_frame": gateway, "raw_s_per_frame": raw, "ratio": gateway / raw}


async def qido_vs_raw(url: str, data_dir: Path, rounds: int = 50) -> dict[str, float]:
    async with httpx.AsyncClient(timeout=60) as client:
        t0 = time.perf_counter()
        for _ in range(rounds):
            r = await client.get(f"{url}/studies", params={"PatientName": "bench*", "limit": 101})
            r.raise_for_status()
        gateway = (time.perf_counter() - t0) / rounds
    db = sqlite3.connect(data_dir / "index.sqlite3")
    t0 = time.perf_counter()
    for _ in range(rounds):
        db.execute("select * from studies s join series se using (study_instance_uid) "
                   "where s.patient_name_folded like 'bench%' limit 101").fetchall()
    raw = (time.perf_counter() - t0) / rounds
    return {"gateway_s_per_query": gateway, "raw_sql_s_per_query": raw, "ratio": gateway / raw}


async def frames_per_second(url: str, rounds: int = 400, concurrency: int = 8) -> float:
    async with httpx.AsyncClient(timeout=60) as client:
        studies = (await client.get(f"{url}/studies", params={"limit": 1})).json()
        study = studies[0]["0020000D"]["Value"][0]
        instances = (await client.get(f"{url}/studies/{study}/instances")).json()
        targets = [(i["0020000E"]["Value"][0], i["00080018"]["Value"][0]) for i in instances]
        accept = {"accept": "multipart/related; type=application/octet-stream; transfer-syntax=*"}
        sem = asyncio.Semaphore(concurrency)

        async def one(n: int) -> None:
            series, sop = targets[n % len(targets)]
            async with sem:
                r = await client.get(f"{url}/studies/{study}/series/{series}/instances/{sop}/frames/1",
                                     headers=accept)
                r.raise_for_status()

        await asyncio.gather(*(one(n) for n in range(20)))  # warm-up
        t0 = time.perf_counter()
        await asyncio.gather(*(one(n) for n in range(rounds)))
        return rounds / (time.perf_counter() - t0)


def deidentify_all(parts: list[bytes]) -> float:
    """Seconds to de-identify every instance: parse, apply the profile, write the new file."""
    import io

    import pydicom

    from dicomgw.deid import deidentify

    t0 = time.perf_counter()
    for data in parts:
        out = io.BytesIO()
        deidentify(pydicom.dcmread(io.BytesIO(data)), b"bench-collection-key").save_as(
            out, enforce_file_format=True)
    return time.perf_counter() - t0


def collection_build(root: str, name: str = "bench-collection") -> float:
    """Seconds from defining a collection of every study to its version 1 being complete."""
    t0 = time.perf_counter()
    defined = httpx.post(f"{root}/admin/collections", json={"name": name}, timeout=60)
    defined.raise_for_status()
    while True:
        [version] = httpx.get(f"{root}/admin/collections/{name}", timeout=60).json()["versions"]
        if version["state"] == "complete":
            return time.perf_counter() - t0
        time.sleep(0.5)  # as `share create --wait` polls (every second); more often slows the build


def audit_on_vs_off(data_dir: Path, repeats: int = 3) -> dict[str, float]:
    """Frames per second of the same gateway data with the audit trail on and off."""
    rates: dict[str, list[float]] = {"on": [], "off": []}
    for _ in range(repeats):
        for label in ("on", "off"):
            gw = start_gateway(data_dir, {"DICOMGW_AUDIT_ENABLED": "true" if label == "on" else "false"})
            try:
                rates[label].append(asyncio.run(frames_per_second(gw.url)))
            finally:
                gw.stop()
    on, off = statistics.median(rates["on"]), statistics.median(rates["off"])
    return {"frames_per_s_audit_on": round(on, 1), "frames_per_s_audit_off": round(off, 1),
            "on_over_off": round(on / off, 3)}


def _write_all(parts: list[bytes], folder: Path) -> list[tuple[Path, bytes, int]]:
    import hashlib

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, data in enumerate(parts):
        path = folder / f"{i}.dcm"
        path.write_bytes(data)
        out.append((path, hashlib.sha256(data).digest(), len(data)))
    return out


async def raw_s3_puts(settings, parts: list[bytes], folder: Path, concurrency: int = 8) -> float:  # type: ignore[no-untyped-def]
    """The same bytes PUT straight to MinIO with their SHA-256, as many at once as the gateway does."""
    from dicomgw.storage.s3 import S3Store

    paths = _write_all(parts, folder)
    store = await S3Store.open(settings)
    sem = asyncio.Semaphore(concurrency)

    async def put(i: int) -> None:
        path, digest, size = paths[i]
        async with sem:
            await store.put_file(f"raw/{i}.dcm", path, sha256=digest, size=size)

    t0 = time.perf_counter()
    await asyncio.gather(*(put(i) for i in range(len(paths))))
    elapsed = time.perf_counter() - t0
    await store.close()
    return elapsed


def bench_s3(parts: list[bytes], tmp: Path) -> dict[str, float]:
    from tests.fixtures.minio import start_minio

    minio = start_minio(tmp / "minio")
    try:
        raw = asyncio.run(raw_s3_puts(minio.settings("bench-raw"), parts, tmp / "raw-s3"))
        gw = start_gateway(tmp / "gw-s3", env=minio.env("bench-gw"))
        try:
            stow = asyncio.run(stow_all(gw.url, parts))
        finally:
            gw.stop()
    finally:
        minio.stop()
    return {"gateway_s": round(stow, 3), "raw_minio_put_s": round(raw, 3), "ratio": round(stow / raw, 2)}


async def gateway_vs_orthanc(parts: list[bytes], gateway_url: str, tmp: Path,
                                    rounds: int = 200) -> dict[str, float]:
    """The same frames fetched from the gateway and from Orthanc's DICOMweb plugin, as OHIF does."""
    import io

    import pydicom

    from tests.fixtures.orthanc import start_orthanc

    orthanc = start_orthanc(tmp / "orthanc")
    try:
        # the same STOW-RS requests, into Orthanc's DICOMweb plugin
        orthanc_stow = await stow_all(f"{orthanc.url}/dicom-web", parts)
        async with httpx.AsyncClient(timeout=60) as client:
            accept = {"accept": "multipart/related; type=application/octet-stream; transfer-syntax=*"}
            timings = {}
            for name, root in (("gateway", gateway_url), ("orthanc", f"{orthanc.url}/dicom-web")):
                t0 = time.perf_counter()
                for data in parts[:rounds]:
                    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
                    url = (f"{root}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
                           f"/instances/{ds.SOPInstanceUID}/frames/1")
                    (await client.get(url, headers=accept)).raise_for_status()
                timings[name] = (time.perf_counter() - t0) / rounds
    finally:
        orthanc.process.terminate()
        orthanc.process.wait(timeout=30)
    return {"orthanc_stow_s": round(orthanc_stow, 3),
            "gateway_s_per_frame": round(timings["gateway"], 5),
            "orthanc_s_per_frame": round(timings["orthanc"], 5),
            "orthanc_over_gateway": round(timings["orthanc"] / timings["gateway"], 2)}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--instances", type=int, default=400)
    parser.add_argument("--s3", action="store_true", help="also STOW into MinIO vs raw PUTs")
    parser.add_argument("--orthanc", action="store_true", help="also frames: gateway vs Orthanc")
    args = parser.parse_args()
    parts = corpus(args.instances)
    size_mb = sum(map(len, parts)) / 2**20
    results: dict[str, object] = {"instances": len(parts), "megabytes": round(size_mb, 1)}
    with tempfile.TemporaryDirectory() as tmp:
        raw = raw_durable_write(parts, Path(tmp) / "raw")
        gw = start_gateway(Path(tmp) / "gw")
        try:
            stow = asyncio.run(stow_all(gw.url, parts))
            results["stow_local"] = {
                "gateway_s": round(stow, 3), "raw_fsync_s": round(raw, 3),
                "ratio": round(stow / raw, 2),
                "gateway_instances_per_s": round(len(parts) / stow, 1),
            }
            deid = deidentify_all(parts)
            results["deidentify"] = {
                "instances_per_s": round(len(parts) / deid, 1),
                "over_stow_instances_per_s": round(stow / deid, 2),
            }
            build = collection_build(gw.root)
            results["collection_build"] = {
                "instances_per_s": round(len(parts) / build, 1),
                "over_stow_instances_per_s": round(stow / build, 2),
            }
            if args.orthanc:
                versus = asyncio.run(gateway_vs_orthanc(parts, gw.url, Path(tmp)))
                versus["gateway_stow_s"] = round(stow, 3)
                versus["orthanc_stow_over_gateway"] = round(versus["orthanc_stow_s"] / stow, 2)
                results["versus_orthanc"] = versus
            for name, fn in (("wado_frames", frames_vs_raw), ("qido_studies", qido_vs_raw)):
                try:
                    results[name] = {k: round(v, 6) for k, v in asyncio.run(fn(gw.url, gw.data_dir)).items()}
                except Exception as exc:  # an endpoint not available in this build
                    results[name] = {"error": repr(exc)[:200]}
        finally:
            gw.stop()
        results["audit_frames"] = audit_on_vs_off(gw.data_dir)
        if args.s3:
            results["stow_s3"] = bench_s3(parts, Path(tmp))
    print(json.dumps(results, indent=2))
    out = REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "latest.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
