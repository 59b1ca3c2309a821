"""Compact originals against Orthanc's StorageCompression, on real pixel data, in one run.

    .venv/bin/python bench/compaction.py        # or: make bench BENCH_ARGS="--only compact"

The corpus is every image file of pydicom's, pydicom-data's and deid-data's test sets (real CT, MR,
US, XA, CR... as the projects ship them), each with its own SOP Instance UID. Printed, each as a ratio
measured here and now:
- bytes on disk of the stored originals: Orthanc 1.10 with ``StorageCompression`` (zlib) against the
  embedded gateway once its worker has compacted them (with the library's default frame codecs,
  ``dicomgw.compact.DEFAULT_CODECS``, unless ``--codecs``), and both against zstd and zlib of each whole
  file computed here. Both ratios are over the same instances, those both servers stored: Orthanc's
  bytes are its attachments' sizes on disk (the zlib-compressed file and its "dicom-until-pixel-data"
  copy, which together are every file of its storage folder but the index), instance by instance;
- compaction throughput per worker core (``dicomgw.compact.compact`` on one thread, MB of originals
  per CPU second) against STOW-RS of the same corpus into the gateway (instances per second);
- one frame's latency (p50) from the compact form against the same frame of the verbatim form, two
  embedded gateways taking turns request by request: of the native images (frames kept apart), and
  apart of the encapsulated ones (whole-file forms: the frame is cut out of the rebuilt original).
"""

from __future__ import annotations

import asyncio
import io
import json
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import versus  # noqa: E402
from bench.compact_codecs import files as image_files  # noqa: E402
from tests.dicomdata import with_fresh_sop_uid  # noqa: E402

COMPACT_ENV = {"DICOMGW_COMPACT_AFTER_SECONDS": "0", "DICOMGW_COMPACT_DROP_AFTER_SECONDS": "0",
               "DICOMGW_WORKER_SWEEP_SECONDS": "1", "DICOMGW_WORKER_POLL_SECONDS": "0.2"}


def _default_codecs() -> str:
    from dicomgw.compact import DEFAULT_CODECS

    return json.dumps(list(DEFAULT_CODECS))


def corpus() -> list[bytes]:
    """The real image files that are PS3.10 files with the identity STOW needs, each made unique."""
    import pydicom

    out = []
    for path in image_files():
        data = path.read_bytes()
        try:
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        except Exception:
            continue
        if all(k in ds for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")) \
                and b"\xe0\x7f\x10\x00" in data:
            out.append(with_fresh_sop_uid(data))
    return out


def disk_bytes(folder: Path, skip: tuple[str, ...] = ()) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.name.startswith(skip))


def orthanc_bytes(url: str) -> dict[str, int]:
    """SOP Instance UID -> bytes Orthanc keeps for it: the compressed size of each of its attachments."""
    out: dict[str, int] = {}
    with httpx.Client(base_url=url, timeout=60) as client:
        for instance in client.get("/instances", params={"expand": "1"}).raise_for_status().json():
            total = 0
            for name in client.get(f"/instances/{instance['ID']}/attachments").raise_for_status().json():
                info = client.get(f"/instances/{instance['ID']}/attachments/{name}/info").raise_for_status()
                total += int(info.json()["CompressedSize"])
            out[instance["MainDicomTags"]["SOPInstanceUID"]] = total
    return out


def sop_uid(data: bytes) -> str:
    import pydicom

    return str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)


async def stow_each(url: str, parts: list[bytes], headers: dict[str, str] | None = None) -> list[bytes]:
    """STOW every instance, one request each; the ones the server stored."""
    from tests.dicomdata import multipart_related

    stored = []
    async with httpx.AsyncClient(timeout=300, headers=headers) as client:
        for data in parts:
            body, ct = multipart_related([data])
            r = await client.post(f"{url}/studies", content=body,
                                  headers={"content-type": ct, "accept": "application/dicom+json"})
            if r.status_code == 200:
                stored.append(data)
    return stored


def compacted(root: str, timeout: float = 900) -> dict[str, Any]:
    """Wait until the worker has looked at every original (and dropped the verbatim copies)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = httpx.get(f"{root}/admin/status", timeout=60).json()
        if not status["storage"]["not_compacted_yet"] and not status["outbox"]:
            return dict(status["storage"])
        time.sleep(1)
    raise RuntimeError("compaction did not finish")


def retrieve(url: str, data: bytes) -> bytes:
    """The instance ``data`` is, as the server sends it back (WADO-RS, any transfer syntax)."""
    import pydicom

    from tests.dicomdata import split_multipart

    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    r = httpx.get(f"{url}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/"
                  f"{ds.SOPInstanceUID}", timeout=60,
                  headers={"accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
    r.raise_for_status()
    [(_, payload)] = split_multipart(r.content, r.headers["content-type"])
    return payload


def frame_targets(parts: list[bytes], encapsulated: bool = False) -> list[tuple[str, str, str]]:
    """(study, series, sop) of the native single- and multi-frame images, whose frames are served from
    their own codestreams when compact; or (``encapsulated``) of the JPEG, JPEG 2000, RLE... images,
    whose frames a whole-file form serves from the rebuilt original."""
    import pydicom

    out = []
    for data in parts:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        syntax = ds.file_meta.TransferSyntaxUID
        if (syntax.is_encapsulated if encapsulated else
                not syntax.is_compressed and ds.get("BitsAllocated") in (8, 16)):
            out.append((ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID))
    return out


def frame_latency(verbatim: str, compact: str, targets: list[tuple[str, str, str]],
                  rounds: int = 5) -> dict[str, float]:
    """p50 (and p90, "..._p90") ms of frame 1 of each target, the two gateways taking turns request by
    request."""
    times: dict[str, list[float]] = {"verbatim": [], "compact": []}
    with httpx.Client(timeout=60) as client:
        for _ in range(rounds):
            for study, series, sop in targets:
                for name, url in (("verbatim", verbatim), ("compact", compact)):
                    path = f"{url}/studies/{study}/series/{series}/instances/{sop}/frames/1"
                    t0 = time.perf_counter()
                    r = client.get(path, headers=versus.OCTETS)
                    r.raise_for_status()
                    times[name].append(time.perf_counter() - t0)
    out = {name: statistics.median(values) * 1000 for name, values in times.items()}
    out.update({f"{name}_p90": versus.p(values, 90) * 1000 for name, values in times.items()})
    return out


def whole_file(parts: list[bytes]) -> dict[str, int]:
    import imagecodecs

    return {"zlib": sum(len(zlib.compress(d, 6)) for d in parts),
            "zstd": sum(len(imagecodecs.zstd_encode(d, level=3)) for d in parts)}


def throughput(parts: list[bytes], codecs: list[str]) -> float:
    """MB of originals compacted per CPU second, on this thread."""
    from dicomgw.compact import compact

    t0 = time.process_time()
    for data in parts:
        compact(data, codecs=tuple(codecs))
    return sum(map(len, parts)) / 1e6 / (time.process_time() - t0)


def run(tmp: Path) -> dict[str, Any]:
    from tests.fixtures.orthanc import start_orthanc

    parts = corpus()
    results: dict[str, Any] = {}
    # the gateway's own default (dicomgw.config) may lag the library's: the library's is measured
    COMPACT_ENV.setdefault("DICOMGW_COMPACT_CODECS", _default_codecs())
    orthanc = start_orthanc(tmp / "orthanc", {"StorageCompression": True})
    try:
        accepted = asyncio.run(stow_each(f"{orthanc.url}/dicom-web", parts))
        orthanc_disk = disk_bytes(tmp / "orthanc" / "orthanc-db", skip=("index",))
        orthanc_kept = orthanc_bytes(orthanc.url)
        if sum(orthanc_kept.values()) != orthanc_disk:
            raise RuntimeError(f"Orthanc's attachments hold {sum(orthanc_kept.values())} bytes, its "
                               f"storage folder {orthanc_disk}")
    finally:
        orthanc.process.terminate()
        orthanc.process.wait(timeout=60)
    with versus.embedded(tmp / "compact", COMPACT_ENV) as gateway, \
            versus.embedded(tmp / "verbatim") as plain:
        t0 = time.perf_counter()
        stored = asyncio.run(stow_each(gateway.url, accepted))
        stow_rate = len(stored) / (time.perf_counter() - t0)
        asyncio.run(stow_each(plain.url, stored))
        assert gateway.root is not None
        storage = compacted(gateway.root)
        gateway_disk = disk_bytes(tmp / "compact" / "gateway" / "objects" / "originals")
        # every original served back byte for byte from its compact form
        for data in stored:
            served = retrieve(gateway.url, data)
            if served != data:
                raise RuntimeError("an original did not come back byte for byte")
        latency = frame_latency(plain.url, gateway.url, frame_targets(stored))
        latency_encapsulated = frame_latency(plain.url, gateway.url, frame_targets(stored, encapsulated=True))
    received = sum(map(len, stored))
    if len(stored) != len(accepted):
        print(f"note: the gateway stored {len(stored)} of the {len(accepted)} instances Orthanc stored "
              f"({len(parts)} sent); both ratios are over the {len(stored)} both stored", flush=True)
    baselines = whole_file(stored)
    codecs = json.loads(COMPACT_ENV["DICOMGW_COMPACT_CODECS"])
    per_core = throughput(stored, codecs)
    results = {
        "instances": len(stored), "received_mb": round(received / 1e6, 1), "frame_codecs": codecs,
        # both servers' ratios over the same instances: those both stored
        "ratio": {"gateway_compact": round(received / gateway_disk, 3),
                  "orthanc_zlib": round(received / sum(orthanc_kept[sop_uid(d)] for d in stored), 3),
                  "zstd_whole_file": round(received / baselines["zstd"], 3),
                  "zlib_whole_file": round(received / baselines["zlib"], 3)},
        "codecs": storage["codecs"], "verbatim": storage["primary"].get("verbatim", {}),
        "compaction_mb_per_core_second": round(per_core, 1),
        "stow_instances_per_s": round(stow_rate, 1),
        "frame_p50_ms": {k: round(v, 2) for k, v in latency.items()},
        "encapsulated_frame_p50_ms": {k: round(v, 2) for k, v in latency_encapsulated.items()},
    }
    r = results["ratio"]
    results["gateway_over_orthanc"] = round(r["gateway_compact"] / r["orthanc_zlib"], 2)
    results["gateway_over_zstd"] = round(r["gateway_compact"] / r["zstd_whole_file"], 2)
    results["frame_compact_over_verbatim"] = round(latency["compact"] / latency["verbatim"], 2)
    results["encapsulated_frame_compact_over_verbatim"] = round(
        latency_encapsulated["compact"] / latency_encapsulated["verbatim"], 2)
    return results


def table(results: dict[str, Any]) -> str:
    r = results["ratio"]
    encapsulated = results["encapsulated_frame_p50_ms"]
    lines = [
        f"{results['instances']} real images, {results['received_mb']} MB as received; frame codecs tried: "
        + ", ".join(results["frame_codecs"]),
        "",
        "| figure | value |",
        "|---|---|",
        f"| stored-bytes ratio, dicomgw compact (bytes received / bytes on disk) | {r['gateway_compact']} |",
        f"| stored-bytes ratio, Orthanc StorageCompression (zlib) | {r['orthanc_zlib']} |",
        f"| dicomgw / Orthanc | {results['gateway_over_orthanc']}x |",
        f"| zstd, zlib of each whole file | {r['zstd_whole_file']}, {r['zlib_whole_file']} |",
        f"| dicomgw / zstd of the whole file | {results['gateway_over_zstd']}x |",
        f"| compaction, MB of originals per core-second | {results['compaction_mb_per_core_second']} |",
        f"| one frame p50, compact / verbatim | {results['frame_compact_over_verbatim']}x "
        f"({results['frame_p50_ms']['compact']} vs {results['frame_p50_ms']['verbatim']} ms; p90 "
        f"{results['frame_p50_ms']['compact_p90']} vs {results['frame_p50_ms']['verbatim_p90']} ms) |",
        f"| one frame p50 of encapsulated images (JPEG...), compact / verbatim | "
        f"{results['encapsulated_frame_compact_over_verbatim']}x "
        f"({encapsulated['compact']} vs {encapsulated['verbatim']} ms; p90 {encapsulated['compact_p90']} vs "
        f"{encapsulated['verbatim_p90']} ms) |",
    ]
    for codec, row in sorted(results["codecs"].items()):
        ratio = row["original_bytes"] / row["bytes"] if row["bytes"] else 0
        lines.append(f"| originals in {codec}: count, ratio, MB stored | {row['originals']}, {ratio:.2f}, "
                     f"{row['bytes'] / 1e6:.2f} |")
    if results["verbatim"]:
        row = results["verbatim"]
        lines.append(f"| originals kept verbatim (nothing saves 5 %): count, MB | {row['originals']}, "
                     f"{row['bytes'] / 1e6:.2f} |")
    return "\n".join(lines)


def main() -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--codecs", default=None, help="DICOMGW_COMPACT_CODECS for the gateway (default: "
                        'dicomgw.compact.DEFAULT_CODECS), e.g. \'["jpegls","htj2k","zstd"]\'')
    args = parser.parse_args()
    if args.codecs:
        COMPACT_ENV["DICOMGW_COMPACT_CODECS"] = json.dumps(json.loads(args.codecs))
    with tempfile.TemporaryDirectory(prefix="dicomgw-bench-compact-") as tmp:
        results = run(Path(tmp))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
