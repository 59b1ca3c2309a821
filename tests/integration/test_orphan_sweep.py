"""The orphan sweep: originals that no index row references are indexed or removed, and nothing else is.

Against the real stores (a local folder, MinIO) and indexes (SQLite, PostgreSQL) the other integration
tests use. Ages are those the stores report: a local file's mtime is set back; MinIO's LastModified
cannot be, so the sweep is run as of a moment ("now") that puts the old objects past the grace period
and the young one within it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select

from dicomgw.config import Settings
from dicomgw.index.models import Instance, OutboxItem
from dicomgw.orphans import Orphan, sweep_orphans
from dicomgw.runtime import Runtime
from dicomgw.storage import ObjectInfo, ObjectStore, original_key
from tests.dicomdata import make_instance, make_study, multipart_related, uid

GRACE = 3600.0


@dataclass
class Gateway:
    runtime: Runtime
    client: httpx.AsyncClient


@contextlib.asynccontextmanager
async def _gateway(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Gateway]:
    """STOW-RS and WADO-RS around a Runtime (no background loop: the test runs the sweep itself)."""
    from dicomgw.web.app import build_app
    from dicomgw_ingest.routes import router as ingest_router
    from dicomgw_retrieve.routes import router as retrieve_router

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    app = build_app(Settings(), [ingest_router, retrieve_router], title="no background loop")
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw",
                                     timeout=60) as client:
            yield Gateway(app.state.runtime, client)


@pytest.fixture(params=["local", "s3"])
def backend_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """A local folder, a local replica folder and SQLite; or MinIO buckets and PostgreSQL."""
    env = {"DATA_DIR": str(tmp_path), "DICOMGW_REPLICA_BACKEND": "local"}
    if request.param == "s3":
        minio = request.getfixturevalue("minio_server")
        suffix = uuid.uuid4().hex[:12]
        env.update(minio.env(f"o-{suffix}"))
        env.update(minio.env(f"r-{suffix}", prefix="DICOMGW_REPLICA_"))
        env["DICOMGW_INDEX_URL"] = request.getfixturevalue("postgres_url")
    return env


async def _stow(client: httpx.AsyncClient, parts: list[bytes], partition: str | None = None) -> None:
    body, content_type = multipart_related(parts)
    root = f"/dicom-web/partitions/{partition}" if partition else "/dicom-web"
    response = await client.post(f"{root}/studies", content=body, headers={"content-type": content_type})
    assert response.status_code == 200, response.text


def _key_of(data: bytes, partition: str = "default", sha_of: bytes | None = None) -> str:
    """The key the ingest path would store ``data`` under (with the SHA-256 of ``sha_of`` if given)."""
    sha = hashlib.sha256(data if sha_of is None else sha_of).hexdigest()
    return original_key(*_uids(data), sha, partition)


def _uids(data: bytes) -> tuple[str, str, str]:
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)


async def _modified(store: ObjectStore, key: str) -> datetime:
    [info] = [i async for i in store.list_objects(key)]
    assert info.modified is not None
    return info.modified


async def _everything(store: ObjectStore) -> dict[str, bytes]:
    return {info.key: await store.read(info.key) async for info in store.list_objects()}


async def _rows(runtime: Runtime) -> dict[str, tuple[str, str]]:
    async with runtime.index.sessions() as session:
        rows = (await session.execute(
            select(Instance.object_key, Instance.partition_name, Instance.sop_instance_uid))).all()
    return {key: (partition, sop) for key, partition, sop in rows}


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _by_key(orphans: list[Orphan]) -> dict[tuple[str, str], str]:
    return {(o.store, o.key): o.action for o in orphans}


async def test_orphans_are_indexed_or_removed_and_nothing_else_is_touched(
        backend_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    from dicomgw_worker.tasks import orphan_sweep

    async with _gateway(backend_env, monkeypatch) as gw:
        runtime, store, replica = gw.runtime, gw.runtime.store, gw.runtime.replica
        assert replica is not None
        await runtime.partitions.create("hospital-a")
        await runtime.partitions.create("research", kind="collection", read_only=True)

        # what the archive holds: STOWed originals (with their replica copies) and derived data
        study = make_study(1, 3)
        in_a = [make_instance()]
        await _stow(gw.client, study)
        await _stow(gw.client, in_a, "hospital-a")
        indexed = await _rows(runtime)
        assert len(indexed) == 4
        for key in indexed:
            await replica.put_bytes(key, await store.read(key))
        derived = {"partitions/research/collection/v1/manifest.csv": b"path,sha256\n",
                   "partitions/research/collection/v1/nifti/1.2.3.nii.gz": b"\x1f\x8b volume",
                   "originals/1.2/3.4/5.6/not-a-digest.dcm": b"not the ingest's layout"}
        for key, data in derived.items():
            await store.put_bytes(key, data)

        # the orphans, old: what killed requests (and worse) leave behind
        lost_stow = make_instance()  # complete, valid, never indexed
        lost_in_a = make_instance()
        study_uid, series_uid, sop_uid = _uids(study[0])
        other_version = make_instance(study_uid=study_uid, series_uid=series_uid, sop_uid=sop_uid,
                                      seed=99)  # the loser of a conflict
        damaged = make_instance()
        not_dicom = b"this is no DICOM file " * 10
        not_dicom_key = original_key(uid(), uid(), uid(), hashlib.sha256(not_dicom).hexdigest())
        in_collection = make_instance()
        elsewhere = make_instance()
        elsewhere_key = _key_of(elsewhere, "nowhere")  # a partition the index does not know
        orphans = {
            _key_of(lost_stow): lost_stow,
            _key_of(lost_in_a, "hospital-a"): lost_in_a,
            _key_of(other_version): other_version,
            _key_of(damaged, sha_of=b"other bytes"): damaged,
            not_dicom_key: not_dicom,
            _key_of(in_collection, "research"): in_collection,
            elsewhere_key: elsewhere,
        }
        for key, data in orphans.items():
            await store.put_bytes(key, data)
        replica_orphan = make_instance()
        replica_orphan_key = _key_of(replica_orphan)
        await replica.put_bytes(replica_orphan_key, replica_orphan)
        old = max([await _modified(store, k) for k in orphans]
                  + [await _modified(replica, replica_orphan_key)])

        # ... and a young one, as a STOW under way leaves it until it commits
        young = make_instance()
        young_key = _key_of(young)
        deadline = time.monotonic() + 10
        while True:
            await store.put_bytes(young_key, young)
            if await _modified(store, young_key) > old:
                break
            assert time.monotonic() < deadline, "the store's clock does not move"
            await asyncio.sleep(0.01)  # the same tick as the old ones: write it again
        cutoff = old + (await _modified(store, young_key) - old) / 2
        now = cutoff + timedelta(seconds=GRACE)

        primary_before, replica_before = await _everything(store), await _everything(replica)
        outbox_before = await _outbox(runtime)
        metrics_before = _metric("dicomgw_orphans_handled_total", store="primary", outcome="indexed")

        # a dry run says what it would do and does nothing
        report = await orphan_sweep(runtime, grace_seconds=GRACE, dry_run=True, now=now)
        expected = {
            ("primary", _key_of(lost_stow)): "indexed",
            ("primary", _key_of(lost_in_a, "hospital-a")): "indexed",
            ("primary", _key_of(other_version)): "removed",
            ("primary", _key_of(damaged, sha_of=b"other bytes")): "removed",
            ("primary", not_dicom_key): "removed",
            ("primary", _key_of(in_collection, "research")): "removed",
            ("primary", elsewhere_key): "kept",
            ("replica", replica_orphan_key): "removed",
        }
        assert _by_key(report.orphans) == expected
        assert report.dry_run and report.complete
        assert report.young == {"primary": 1, "replica": 0}
        assert report.listed == {"primary": 4 + len(orphans) + 1, "replica": 4 + 1}
        assert await _everything(store) == primary_before
        assert await _everything(replica) == replica_before
        assert await _rows(runtime) == indexed
        assert await _outbox(runtime) == outbox_before
        assert _metric("dicomgw_orphans_handled_total", store="primary", outcome="indexed") == metrics_before

        # the sweep itself
        found_before = {s: _metric("dicomgw_orphans_found_total", store=s) for s in ("primary", "replica")}
        bytes_before = _metric("dicomgw_orphans_handled_bytes_total", store="primary", outcome="removed")
        report = await orphan_sweep(runtime, grace_seconds=GRACE, now=now)
        assert _by_key(report.orphans) == expected
        assert not report.dry_run and report.complete

        after = await _everything(store)
        removed = {key for (name, key), action in expected.items()
                   if action == "removed" and name == "primary"}
        assert set(after) == set(primary_before) - removed
        # every indexed original, the derived data, the kept and the young: untouched, byte-exact
        assert all(after[key] == primary_before[key] for key in after)
        assert {key: after[key] for key in derived} == derived
        assert after[young_key] == young
        replica_after = await _everything(replica)
        assert set(replica_after) == set(replica_before) - {replica_orphan_key}
        assert all(replica_after[key] == replica_before[key] for key in replica_after)

        # the complete ones are indexed as the interrupted request would have done, work owed included
        rows = await _rows(runtime)
        assert set(rows) == set(indexed) | {_key_of(lost_stow), _key_of(lost_in_a, "hospital-a")}
        assert rows[_key_of(lost_in_a, "hospital-a")][0] == "hospital-a"
        owed = await _outbox(runtime)
        sop = _uids(lost_stow)[2]
        assert ("verify", sop) in owed and ("replicate", sop) in owed
        assert ("verify", f"hospital-a/{_uids(lost_in_a)[2]}") in owed

        # counted
        assert _metric("dicomgw_orphans_handled_total", store="primary", outcome="indexed") == \
            metrics_before + 2
        assert _metric("dicomgw_orphans_found_total", store="primary") == found_before["primary"] + 7
        assert _metric("dicomgw_orphans_found_total", store="replica") == found_before["replica"] + 1
        assert _metric("dicomgw_orphans_handled_bytes_total", store="primary", outcome="removed") == \
            bytes_before + sum(len(primary_before[key]) for key in removed)

        # who put it in the archive: the audit trail says
        events = await runtime.audit.events(who="orphan-sweep")
        assert {e.studies for e in events} == {(_uids(lost_stow)[0],), (_uids(lost_in_a)[0],)}

        # the client's retry is then answered as for any instance already stored, and it is served
        await _stow(gw.client, [lost_stow])
        study_uid, series_uid, sop_uid = _uids(lost_stow)
        response = await gw.client.get(
            f"/dicom-web/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}",
            headers={"accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
        assert response.status_code == 200 and lost_stow in response.content

        # again: only what is left for a person to look at, and the young one once it is old
        report = await orphan_sweep(runtime, grace_seconds=GRACE, now=now + timedelta(hours=2))
        assert _by_key(report.orphans) == {("primary", elsewhere_key): "kept",
                                            ("primary", young_key): "indexed"}



async def _outbox(runtime: Runtime) -> set[tuple[str, str]]:
    async with runtime.index.sessions() as session:
        return {(task, key) for task, key in (await session.execute(
            select(OutboxItem.task, OutboxItem.key))).all()}


def _local_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"DATA_DIR": str(tmp_path), "DICOMGW_REPLICA_BACKEND": "none",
            "DICOMGW_INDEX_URL": f"sqlite+aiosqlite:///{tmp_path / 'index.sqlite3'}", **extra}


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


async def test_young_unreferenced_originals_are_left_to_their_stow(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """By the real clock and the default grace period: an hour old is an orphan, a minute is not."""
    async with _gateway(_local_env(tmp_path), monkeypatch) as gw:
        old, young = make_instance(), make_instance()
        for data, age in ((old, 2 * GRACE), (young, 60)):
            await gw.runtime.store.put_bytes(_key_of(data), data)
            _age(tmp_path / "objects" / _key_of(data), age)
        report = await sweep_orphans(gw.runtime)
        assert _by_key(report.orphans) == {("primary", _key_of(old)): "indexed"}
        assert report.young == {"primary": 1}
        assert (tmp_path / "objects" / _key_of(young)).read_bytes() == young
        assert set(await _rows(gw.runtime)) == {_key_of(old)}


class _Intercepted:
    """A store whose ``head`` or ``open_stream`` first runs ``before`` (once): a concurrent request
    landing between the sweep's decision and its action."""

    def __init__(self, store: ObjectStore, method: str, before: Callable[[], Any]) -> None:
        self._store, self._method, self._before = store, method, before

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._store, name)
        if name != self._method or self._before is None:
            return attribute
        before, self._before = self._before, None  # type: ignore[assignment]
        if name == "head":
            async def head(key: str) -> ObjectInfo:
                await before()
                return await attribute(key)  # type: ignore[no-any-return]
            return head

        async def open_stream(key: str, **kwargs: Any) -> AsyncIterator[bytes]:
            await before()
            async for chunk in attribute(key, **kwargs):
                yield chunk
        return open_stream


async def test_an_original_stored_again_and_indexed_while_the_sweep_removes_it_stays(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A damaged leftover is about to be removed when a client's retry stores the right bytes under
    its key and commits: the re-check just before the delete leaves it."""
    async with _gateway(_local_env(tmp_path), monkeypatch) as gw:
        data = make_instance()
        key = _key_of(data)
        await gw.runtime.store.put_bytes(key, data[:-8] + b"\x00" * 8)  # the bytes its key does not name
        _age(tmp_path / "objects" / key, 2 * GRACE)
        gw.runtime.store = _Intercepted(gw.runtime.store, "head",  # type: ignore[assignment]
                                        lambda: _stow(gw.client, [data]))
        report = await sweep_orphans(gw.runtime)
        assert [(o.key, o.action, o.reason) for o in report.orphans] == [
            (key, "skipped", "written again meanwhile")]
        assert (tmp_path / "objects" / key).read_bytes() == data
        assert set(await _rows(gw.runtime)) == {key}


async def test_an_orphan_indexed_by_a_retry_while_the_sweep_reads_it_is_left_as_it_is(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same instance indexed by a client's retry while the sweep reads it: one row, one object."""
    async with _gateway(_local_env(tmp_path), monkeypatch) as gw:
        data = make_instance()
        key = _key_of(data)
        await gw.runtime.store.put_bytes(key, data)
        _age(tmp_path / "objects" / key, 2 * GRACE)
        gw.runtime.store = _Intercepted(gw.runtime.store, "open_stream",  # type: ignore[assignment]
                                        lambda: _stow(gw.client, [data]))
        report = await sweep_orphans(gw.runtime)
        assert [(o.key, o.action, o.reason) for o in report.orphans] == [
            (key, "skipped", "indexed meanwhile")]
        assert (tmp_path / "objects" / key).read_bytes() == data
        assert set(await _rows(gw.runtime)) == {key}


async def test_the_embedded_loop_sweeps_orphans(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dicomgw_worker.loop import embedded_worker

    env = _local_env(tmp_path, DICOMGW_WORKER_ORPHAN_SWEEP_SECONDS="0.2",
                     DICOMGW_WORKER_ORPHAN_GRACE_SECONDS="60")
    async with _gateway(env, monkeypatch) as gw:
        data = make_instance()
        await gw.runtime.store.put_bytes(_key_of(data), data)
        _age(tmp_path / "objects" / _key_of(data), 120)
        async with embedded_worker(gw.runtime):
            deadline = time.monotonic() + 30
            while _key_of(data) not in await _rows(gw.runtime):
                assert time.monotonic() < deadline, "the embedded loop did not index the orphan"
                await asyncio.sleep(0.1)


def test_beat_schedules_the_orphan_sweep_and_the_task_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dicomgw_worker import celery_app

    for name, value in _local_env(tmp_path, DICOMGW_WORKER_ORPHAN_SWEEP_SECONDS="7200").items():
        monkeypatch.setenv(name, value)
    app = celery_app.make_celery(Settings())
    assert app.conf.beat_schedule["orphan-sweep"] == {"task": "dicomgw.orphan_sweep", "schedule": 7200.0}
    assert app.conf.task_annotations["dicomgw.orphan_sweep"]["soft_time_limit"] == 7200.0
    ours = {name for name in celery_app.celery.tasks if name.startswith("dicomgw.")}
    assert "dicomgw.orphan_sweep" in ours and ours <= set(celery_app.TASK_ROUTES)
    monkeypatch.setenv("DICOMGW_WORKER_ORPHAN_SWEEP_SECONDS", "0")
    assert "orphan-sweep" not in celery_app.make_celery(Settings()).conf.beat_schedule

    # the task as a worker process runs it (its own event loop and Runtime; the schema made beforehand,
    # as the stack's migration does)
    from dicomgw.index.db import upgrade_sync

    upgrade_sync(Settings().index_url)
    data = make_instance()
    path = tmp_path / "objects" / _key_of(data)
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    _age(path, 2 * GRACE)
    try:
        summary = celery_app.orphan_sweep_task()
    finally:
        celery_app._ProcessRuntime.stop()
    assert summary == {"found": 1, "bytes": len(data), "indexed": 1, "removed": 0, "kept": 0,
                       "skipped": 0}


def test_the_command_sweeps_on_demand_and_its_dry_run_changes_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from dicomgw_gateway.cli import main

    for name, value in _local_env(tmp_path).items():
        monkeypatch.setenv(name, value)
    junk = b"no DICOM at all"
    key = original_key(uid(), uid(), uid(), hashlib.sha256(junk).hexdigest())
    path = tmp_path / "objects" / key
    path.parent.mkdir(parents=True)
    path.write_bytes(junk)
    _age(path, 600)

    assert main(["orphans", "sweep", "--dry-run", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["found"] == 0  # ten minutes: within the grace period
    assert main(["orphans", "sweep", "--grace", "300", "--dry-run", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["dryRun"], report["found"], report["removed"]) == (True, 1, 1)
    assert [(o["key"], o["action"]) for o in report["orphans"]] == [(key, "removed")]
    assert path.read_bytes() == junk

    assert main(["orphans", "sweep", "--grace", "300"]) == 0
    out = capsys.readouterr().out
    assert key in out and "1 removed" in out
    assert not path.exists()
