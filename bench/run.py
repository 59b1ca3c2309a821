"""dicomgw benchmarks: every figure is a ratio against a baseline measured in the same run, here.

    make bench   # or: .venv/bin/python bench/run.py [--only clinical,index,stack,extras,compact,...]

Against Orthanc's DICOMweb plugin (bench/versus.py), each figure of issue 10 as gateway/Orthanc and,
where a raw store exists, gateway/raw (files written and fsynced by 4 threads; PUTs and GETs straight to
the same MinIO):
- ``clinical``: CT, MR and PET studies (293 MB), the embedded gateway (SQLite, local folder);
- ``index``: 90,000 small instances in 1,500 studies, embedded (``--index-studies`` to shrink it);
- ``stack``: the clinical corpus into the local distributed stack of `make up` (nginx, split
  services, PostgreSQL, MinIO with a replica, the worker running).
Other figures (``extras``), on the clinical corpus:
- de-identification (read, profile, write) instances per second vs STOW-RS of the same instances;
- a research collection of them built by the embedded worker, instances per second vs STOW-RS;
- WADO-RS frames per second with the audit trail on vs off (alternating runs).
``compact`` (bench/compaction.py): stored bytes of real images kept compact against Orthanc's
StorageCompression and zstd, compaction throughput per core, frame latency compact vs verbatim.
``datasets`` (bench/datasets.py, issue 14), on the local stack with MinIO: ``CollectionDataset`` over a
collection of 200-slice CT series, first epoch vs a naive dicomweb-client loop and second epoch vs pydicom
on local files; ``dicomgw-client pull`` of that collection and of 7,000 small files vs copying the same
objects straight from MinIO at the same concurrency.
``pixels`` (bench/clean_pixels.py, issue 16): real US, SC, CR, CT and MR files built into a collection per
modality in the embedded gateway with and without ``clean-pixels``: images per second and CPU seconds
per image, and the ratio (bench/clean_pixels.py alone also compares the OCR engines).
Results are printed as Markdown tables and written to bench/results/latest.json and latest.md
(git-ignored); the README's performance table is a copy of one run's.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import versus  # noqa: E402
from tests.dicomdata import multipart_related  # noqa: E402
from tests.fixtures.gateway import start_gateway  # noqa: E402


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


def extras(parts: list[bytes], tmp: Path) -> dict[str, object]:
    results: dict[str, object] = {}
    gw = start_gateway(tmp / "extras")
    try:
        stow = asyncio.run(stow_all(gw.url, parts))
        deid = deidentify_all(parts)
        results["deidentify"] = {"instances_per_s": round(len(parts) / deid, 1),
                                 "over_stow_instances_per_s": round(stow / deid, 2)}
        build = collection_build(gw.root)
        results["collection_build"] = {"instances_per_s": round(len(parts) / build, 1),
                                       "over_stow_instances_per_s": round(stow / build, 2)}
    finally:
        gw.stop()
    results["audit_frames"] = audit_on_vs_off(gw.data_dir)
    return results


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    import os

    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {memory:.0f} GiB, {platform.system()} {platform.release()}"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default="clinical,index,stack,extras,compact,datasets,pixels",
                        help="comma-separated: clinical, index, stack, extras, compact, datasets, pixels")
    parser.add_argument("--index-studies", type=int, default=1500, help="studies of 60 instances")
    args = parser.parse_args()
    wanted = set(args.only.split(","))
    results: dict[str, object] = {"machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                             time.gmtime())}
    tables = [f"Machine: {results['machine']}; run started {results['started']}."]
    clinical = versus.clinical()
    with tempfile.TemporaryDirectory(prefix="dicomgw-bench-") as tmp:
        runs = [("clinical", "embedded", lambda: clinical),
                ("index", "embedded", lambda: versus.index_scale(args.index_studies)),
                ("stack", "stack", lambda: clinical)]
        for name, where, make in runs:
            if name not in wanted:
                continue
            corpus = make()
            folder = Path(tmp) / name
            ohif = name != "index"  # OHIF opens the 200-slice CT
            result = (versus.run_stack(corpus, folder, ohif) if where == "stack"
                      else versus.run_embedded(corpus, folder, ohif=ohif))
            result["gateway"] = ("the local stack (nginx, split services, PostgreSQL, MinIO + replica)"
                                 if where == "stack" else "embedded (SQLite, local folder)")
            results[name] = result
            tables.append(f"### {name}: {result['gateway']}\n\n{versus.table(result)}")
            print(tables[-1], flush=True)
        # the other modules' figures: (name, title, module, its run and its table)
        for name, title, module, run, table in (
                ("compact", "stored originals against Orthanc's StorageCompression", "compaction", "run",
                 "table"),
                ("datasets", "a research collection read (CollectionDataset, dicomgw-client pull)",
                 "datasets", "run", "table"),
                ("pixels", "a collection with and without Clean Pixel Data", "clean_pixels", "collection",
                 "collection_table")):
            if name not in wanted:
                continue
            figures = importlib.import_module(f"bench.{module}")
            results[name] = getattr(figures, run)(Path(tmp) / name)
            tables.append(f"### {name}: {title}\n\n" + getattr(figures, table)(results[name]))
            print(tables[-1], flush=True)
        if "extras" in wanted:
            results["extras"] = extras(clinical.parts, Path(tmp))
            tables.append("### extras\n\n```\n" + json.dumps(results["extras"], indent=2) + "\n```")
            print(tables[-1], flush=True)
    out = REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "latest.json").write_text(json.dumps(results, indent=2))
    (out / "latest.md").write_text("\n\n".join(tables) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
