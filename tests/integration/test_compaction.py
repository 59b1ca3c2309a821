"""Compact originals in the embedded gateway: real CT, MR, ultrasound and colour files are compacted by
the worker, every one is still served byte for byte, frames decode from their own codestreams, and a
damaged compact copy is found and repaired from the replica."""

from __future__ import annotations

import contextlib
import hashlib
import io
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.data import get_testdata_file

from tests.dicomdata import multipart_related, split_multipart, with_fresh_sop_uid

# native CT and MR (one and several frames), 8-bit RGB, ultrasound palette, an odd-sized padded MR,
# and a JPEG-compressed file that only the whole-file form can shrink
FILES = ["CT_small.dcm", "MR_small.dcm", "emri_small.dcm", "SC_rgb.dcm", "US1_UNCR.dcm",
         "MR_small_padded.dcm", "JPEG2000.dcm"]
IMAGE_CODECS = ("jpegls", "htj2k", "jpegxl")
JPEG_LS = "1.2.840.10008.1.2.4.80"


def _corpus() -> list[bytes]:
    return [with_fresh_sop_uid(Path(str(get_testdata_file(name))).read_bytes()) for name in FILES]


def _rows(data_dir: Path) -> dict[str, tuple[str, str, str | None, int | None, str]]:
    with sqlite3.connect(data_dir / "index.sqlite3") as db:
        return {uid: (form, replica_form, codec, size, key) for uid, form, replica_form, codec, size, key in
                db.execute("select sop_instance_uid, stored_form, replica_form, codec, stored_size, "
                           "object_key from instances")}


def _frames(original: bytes) -> list[bytes]:
    ds = pydicom.dcmread(io.BytesIO(original))
    size = ds.Rows * ds.Columns * ds.SamplesPerPixel * ds.BitsAllocated // 8
    return [ds.PixelData[i * size:(i + 1) * size] for i in range(int(ds.get("NumberOfFrames") or 1))]


@contextlib.asynccontextmanager
async def _gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                   **env: str) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    """The embedded STOW and WADO routers on a data folder with a local replica and compaction as soon
    as verified, without the background loop (``_settle`` runs it to the end); its runtime and a client."""
    from dicomgw.config import Settings
    from dicomgw.web.app import build_app
    from dicomgw_ingest.routes import router as ingest_router
    from dicomgw_retrieve.routes import router as retrieve_router

    for name, value in {"DATA_DIR": str(tmp_path), "DICOMGW_REPLICA_BACKEND": "local",
                        "DICOMGW_COMPACT_AFTER_SECONDS": "0", "DICOMGW_COMPACT_DROP_AFTER_SECONDS": "0",
                        **env}.items():
        monkeypatch.setenv(name, value)
    app = build_app(Settings(), [ingest_router, retrieve_router], title="STOW and WADO, no background loop")
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
            yield app.state.runtime, client


async def _settle(runtime: Any) -> None:
    """What the embedded loop does, run to the end: sweeps, and every outbox row they queue."""
    from dicomgw_worker import loop, tasks

    for _ in range(10):
        await tasks.sweep(runtime)
        while await loop.drain_once(runtime):
            pass


async def test_compacted_originals_are_served_byte_for_byte_and_repaired_from_the_replica(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dicomgw.status import integrity_status
    from dicomgw_gateway import storage_report
    from dicomgw_worker import tasks

    corpus = _corpus()
    by_uid = {str(pydicom.dcmread(io.BytesIO(d), stop_before_pixels=True).SOPInstanceUID): d for d in corpus}
    async with _gateway(tmp_path, monkeypatch) as (runtime, c):
        body, ct = multipart_related(corpus)
        resp = await c.post("/dicom-web/studies", content=body, headers={"content-type": ct})
        assert resp.status_code == 200, resp.text
        await _settle(runtime)
        rows = _rows(tmp_path)
        assert set(rows) == set(by_uid)
        compacted = {uid for uid, row in rows.items() if row[0] == "compact"}
        # every image with native pixel data got a frame codec; each copy is compact in both stores
        for name, (uid, original) in zip(FILES, by_uid.items(), strict=True):
            form, replica_form, codec, size, key = rows[uid]
            if name in ("CT_small.dcm", "MR_small.dcm", "emri_small.dcm"):
                assert (form, replica_form) == ("compact", "compact"), (name, rows[uid])
                assert codec in IMAGE_CODECS, (name, rows[uid])
                assert size is not None and size * 1.5 < len(original), (name, size, len(original))
            if form == "compact":
                # the verbatim copies were dropped; the compact ones are what is stored
                assert not (tmp_path / "objects" / key).exists()
                assert not (tmp_path / "replica" / key).exists()
                assert (tmp_path / "objects" / (key + ".dgwc")).stat().st_size == size
                assert (tmp_path / "replica" / (key + ".dgwc")).read_bytes() == \
                    (tmp_path / "objects" / (key + ".dgwc")).read_bytes()
        assert len(compacted) >= 5

        # the storage report's accounting is the bytes on disk of each store
        report = storage_report.report(
            await integrity_status(runtime.index, replica_enabled=True), runtime.settings.cost)
        for store, folder in (("primary", "objects"), ("replica", "replica")):
            files = (tmp_path / folder / "originals").rglob("*")
            on_disk = sum(p.stat().st_size for p in files if p.is_file())
            assert report["stores"][store]["stored_bytes"] == on_disk, store
            assert report["stores"][store]["original_bytes"] == sum(len(d) for d in corpus)
            assert report["stores"][store]["ratio"] > 1.3, report
        assert report["monthly"] < report["monthly_if_verbatim"]
        assert "total:" in "\n".join(storage_report.lines(report))

        async def served(uid: str) -> bytes:
            ds = pydicom.dcmread(io.BytesIO(by_uid[uid]), stop_before_pixels=True)
            base = f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            resp = await c.get(f"{base}/instances/{uid}", headers={
                "accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
            assert resp.status_code == 200, resp.text
            [(_, payload)] = split_multipart(resp.content, resp.headers["content-type"])
            return payload

        # every instance served byte for byte, whichever form it is kept in
        for uid, original in by_uid.items():
            assert hashlib.sha256(await served(uid)).digest() == hashlib.sha256(original).digest(), uid
        # frames: each decoded from its own codestream, identical to the original's frame bytes
        for uid in compacted:
            ds = pydicom.dcmread(io.BytesIO(by_uid[uid]), stop_before_pixels=True)
            if ds.file_meta.TransferSyntaxUID.is_compressed:
                continue
            expected = _frames(by_uid[uid])
            numbers = ",".join(str(n) for n in range(1, len(expected) + 1))
            resp = await c.get(
                f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{uid}"
                f"/frames/{numbers}",
                headers={"accept": 'multipart/related; type="application/octet-stream"'})
            assert resp.status_code == 200, resp.text
            got = [p for _, p in split_multipart(resp.content, resp.headers["content-type"])]
            assert got == expected, uid

        # a client that decodes the compact frames' syntax gets their codestreams as they are
        import imagecodecs

        served_as_is = 0
        for uid in compacted:
            ds = pydicom.dcmread(io.BytesIO(by_uid[uid]))
            if ds.file_meta.TransferSyntaxUID.is_compressed:
                continue
            base = (f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
                    f"/instances/{uid}")
            for accept in ('multipart/related; type="application/octet-stream"; '
                           f"transfer-syntax={JPEG_LS}", 'multipart/related; type="image/jls"'):
                resp = await c.get(f"{base}/frames/1", headers={"accept": accept})
                if rows[uid][2] != "jpegls":
                    assert resp.status_code == 406, (uid, rows[uid], resp.text)
                    continue
                assert resp.status_code == 200, resp.text
                [(headers, codestream)] = split_multipart(resp.content, resp.headers["content-type"])
                assert f"transfer-syntax={JPEG_LS}" in headers["content-type"]
                frames = int(ds.get("NumberOfFrames") or 1)
                expected = ds.pixel_array if frames == 1 else ds.pixel_array[0]
                decoded = imagecodecs.jpegls_decode(codestream)
                assert (decoded.reshape(expected.shape).view(expected.dtype) == expected).all(), uid
                assert len(codestream) < len(_frames(by_uid[uid])[0])
                served_as_is += 1
        assert served_as_is >= 2

        # a flipped byte in a compact copy: verification finds it, repair restores it from the replica
        victim_uid = next(uid for uid in compacted if rows[uid][2] in IMAGE_CODECS)
        victim = tmp_path / "objects" / (rows[victim_uid][4] + ".dgwc")
        damaged = bytearray(victim.read_bytes())
        damaged[len(damaged) // 2] ^= 0x01
        victim.write_bytes(bytes(damaged))
        outcome = await tasks.verify(runtime, victim_uid)
        assert outcome == "mismatch"
        assert await tasks.repair(runtime, victim_uid) == "primary-repaired"
        replica_copy = tmp_path / "replica" / (rows[victim_uid][4] + ".dgwc")
        assert victim.read_bytes() == replica_copy.read_bytes()
        assert await served(victim_uid) == by_uid[victim_uid]
        with sqlite3.connect(tmp_path / "index.sqlite3") as db:
            [(status, repaired)] = db.execute("select verify_status, repaired_count from instances "
                                              "where sop_instance_uid = ?", (victim_uid,))
        assert (status, repaired) == ("repaired", 1)

        # compact objects no row keeps compact (a compaction killed before its commit) are swept;
        # the ones rows keep are not
        strays = [tmp_path / "objects" / f"originals/1.2.3/1.2.3.4/1.2.3.4.5/{'ab' * 32}.dcm.dgwc"]
        strays += [tmp_path / "objects" / (row[4] + ".dgwc") for row in rows.values()
                   if row[0] == "verbatim"]
        for stray in strays:
            stray.parent.mkdir(parents=True, exist_ok=True)
            stray.write_bytes(b"DGWC left over")
        swept = await tasks.orphan_sweep(runtime, grace_seconds=0)
        assert not [stray for stray in strays if stray.exists()], swept.summary()
        for uid in compacted:
            assert (tmp_path / "objects" / (rows[uid][4] + ".dgwc")).exists()
            assert (tmp_path / "replica" / (rows[uid][4] + ".dgwc")).exists()
        assert await served(victim_uid) == by_uid[victim_uid]


async def test_a_partitions_policy_moves_its_old_originals_to_the_cold_tier_where_they_are_still_served(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dicomgw.index.repository import work_key
    from dicomgw.status import integrity_status
    from dicomgw.storage.tiered import TIER_READS
    from dicomgw_gateway import storage_report
    from dicomgw_worker import tasks

    corpus = _corpus()[:4]
    # the deployment: never cold (DICOMGW_COLD_AFTER_SECONDS -1); the partition: at once
    async with _gateway(tmp_path, monkeypatch, DICOMGW_COLD_BACKEND="local",
                        DICOMGW_COLD_DROP_AFTER_SECONDS="0") as (runtime, c):
        created = await c.post("/admin/partitions", json={"name": "old-hospital", "coldAfterSeconds": 0})
        assert created.status_code == 201, created.text
        assert created.json()["coldAfterSeconds"] == 0 and created.json()["compactAfterSeconds"] is None
        body, ct = multipart_related(corpus)
        for root in ("/dicom-web", "/dicom-web/partitions/old-hospital"):
            resp = await c.post(f"{root}/studies", content=body, headers={"content-type": ct})
            assert resp.status_code == 200, resp.text
        await _settle(runtime)
        with sqlite3.connect(tmp_path / "index.sqlite3") as db:
            tiers = dict(db.execute("select partition_name, group_concat(distinct tier) from instances "
                                    "group by partition_name"))
        assert tiers == {"default": "hot", "old-hospital": "cold"}
        # the partition's originals are in the cold folder only, compacted first; the rest stay hot
        files = (tmp_path / "cold").rglob("*")
        cold = sorted(p.relative_to(tmp_path / "cold") for p in files if p.is_file())
        assert len(cold) == len(corpus)
        assert all(p.parts[:2] == ("partitions", "old-hospital") for p in cold)
        assert any(p.suffix == ".dgwc" for p in cold)
        assert not (tmp_path / "objects" / "partitions").exists() or \
            not [p for p in (tmp_path / "objects" / "partitions").rglob("*") if p.is_file()]
        hot = [p for p in (tmp_path / "objects" / "originals").rglob("*") if p.is_file()]
        assert len(hot) == len(corpus)

        before = TIER_READS.labels(tier="cold")._value.get()
        for original in corpus:
            ds = pydicom.dcmread(io.BytesIO(original), stop_before_pixels=True)
            root = "/dicom-web/partitions/old-hospital"
            resp = await c.get(f"{root}/studies/{ds.StudyInstanceUID}/series/"
                               f"{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}",
                               headers={"accept": 'multipart/related; type="application/dicom"; '
                                                  'transfer-syntax=*'})
            assert resp.status_code == 200, resp.text
            [(_, payload)] = split_multipart(resp.content, resp.headers["content-type"])
            assert payload == original
            # and verification reads the cold copy
            assert await tasks.verify(runtime, work_key("old-hospital", ds.SOPInstanceUID)) == "verified"
        assert TIER_READS.labels(tier="cold")._value.get() >= before + len(corpus)

        report = storage_report.report(
            await integrity_status(runtime.index, replica_enabled=True), runtime.settings.cost)
        on_disk = sum((tmp_path / "cold" / p).stat().st_size for p in cold)
        assert report["stores"]["cold"]["stored_bytes"] == on_disk
        assert report["stores"]["cold"]["per_tb_month"] < report["stores"]["primary"]["per_tb_month"]

        # the policy is changed and read back over the admin API; bad input is a clear 400 or 404
        changed = await c.patch("/admin/partitions/old-hospital", json={"coldAfterSeconds": None})
        assert changed.status_code == 200 and changed.json()["coldAfterSeconds"] is None
        bad = await c.patch("/admin/partitions/old-hospital", json={"coldAfterSeconds": "soon"})
        assert bad.status_code == 400 and bad.headers["content-type"] == "application/problem+json"
        missing = await c.patch("/admin/partitions/nowhere", json={"coldAfterSeconds": 1})
        assert missing.status_code == 404


async def test_a_large_compact_copy_is_streamed_part_by_part_and_any_range_of_it_is_exact(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dicomgw import compact, originals
    from dicomgw.storage.local import LocalStore

    data = Path(str(get_testdata_file("emri_small.dcm"))).read_bytes()  # noqa: ASYNC240 - 10 frames
    built = compact.compact(data)
    assert built is not None and built.frames == 10
    store = LocalStore(tmp_path)
    copy = originals.Copy("originals/x.dcm", originals.COMPACT, len(data))
    await store.put_bytes(copy.key, built.data)
    monkeypatch.setattr(originals, "STREAM_ABOVE", 0)  # streamed, as an original over 32 MiB is
    reads: list[int] = []
    read_range = store.read_range

    async def counted(key: str, start: int, length: int) -> bytes:
        reads.append(length)
        return await read_range(key, start, length)

    monkeypatch.setattr(store, "read_range", counted)
    whole = b"".join([chunk async for chunk in originals.stream(store, copy)])
    assert whole == data
    assert len(reads) > 10 and max(reads) < len(built.data)  # part by part, never the whole object
    size = len(data)
    for start, length in [(0, 10), (5, size - 5), (size // 3, 1000), (size - 1, 1), (128, None)]:
        got = b"".join([chunk async for chunk in originals.stream(store, copy, start=start, length=length)])
        assert got == data[start:None if length is None else start + length], (start, length)
    # damage: the stream fails instead of ending with wrong bytes
    damaged = bytearray(built.data)
    damaged[-3] ^= 0xFF
    await store.put_bytes(copy.key, bytes(damaged))
    with pytest.raises(compact.CompactCorrupt):
        b"".join([chunk async for chunk in originals.stream(store, copy)])
