"""One contract for every ObjectStore adapter, run against the local folder and a real MinIO."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import pytest
import pytest_asyncio

from dicomgw.config import StorageSettings
from dicomgw.errors import StorageUnavailable
from dicomgw.storage import ObjectNotFound, ObjectStore
from dicomgw.storage.local import LocalStore
from dicomgw.storage.s3 import S3Store


@pytest_asyncio.fixture(params=["local", "s3"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ObjectStore]:
    if request.param == "local":
        adapter: ObjectStore = LocalStore(tmp_path / "objects")
    else:
        settings: StorageSettings = request.getfixturevalue("s3_settings")
        adapter = await S3Store.open(settings)
    yield adapter
    await adapter.close()


def _file(tmp_path: Path, data: bytes, name: str = "src.bin") -> tuple[Path, bytes]:
    path = tmp_path / name
    path.write_bytes(data)
    return path, hashlib.sha256(data).digest()


async def test_put_file_then_read_is_byte_exact(store: ObjectStore, tmp_path: Path) -> None:
    data = os.urandom(200_000)
    path, sha = _file(tmp_path, data)
    await store.put_file("originals/a/b/c/x.dcm", path, sha256=sha, size=len(data))
    assert await store.read("originals/a/b/c/x.dcm") == data
    assert (await store.head("originals/a/b/c/x.dcm")).size == len(data)
    assert await store.exists("originals/a/b/c/x.dcm")


async def test_wrong_checksum_is_refused_and_leaves_nothing(store: ObjectStore, tmp_path: Path) -> None:
    data = os.urandom(50_000)
    path, _ = _file(tmp_path, data)
    with pytest.raises(StorageUnavailable):
        await store.put_file("k/bad.dcm", path, sha256=hashlib.sha256(b"other").digest(), size=len(data))
    assert not await store.exists("k/bad.dcm")


async def test_ranges_and_streams(store: ObjectStore, tmp_path: Path) -> None:
    data = bytes(range(256)) * 4000
    path, sha = _file(tmp_path, data)
    await store.put_file("r/obj", path, sha256=sha, size=len(data))
    assert await store.read_range("r/obj", 1000, 300) == data[1000:1300]
    chunks = [c async for c in store.open_stream("r/obj", start=5000, length=70_000, chunk_size=8192)]
    assert b"".join(chunks) == data[5000:75_000]
    assert b"".join([c async for c in store.open_stream("r/obj")]) == data


async def test_ranges_at_and_past_the_end(store: ObjectStore, tmp_path: Path) -> None:
    data = os.urandom(10_000)
    path, sha = _file(tmp_path, data)
    await store.put_file("e/obj", path, sha256=sha, size=len(data))
    assert await store.read_range("e/obj", 9_990, 100) == data[9_990:]  # clipped at the end
    assert await store.read_range("e/obj", 10_000, 10) == b""
    assert await store.read_range("e/obj", 50_000, 10) == b""
    assert [c async for c in store.open_stream("e/obj", start=20_000)] == []
    assert [c async for c in store.open_stream("e/obj", start=10, length=0)] == []
    assert b"".join([c async for c in store.open_stream("e/obj", start=9_000)]) == data[9_000:]
    await store.put_bytes("e/empty", b"")
    assert await store.read("e/empty") == b""
    assert (await store.head("e/empty")).size == 0
    assert [c async for c in store.open_stream("e/empty")] == []
    with pytest.raises(ObjectNotFound):
        await store.read_range("e/none", 0, 0)
    with pytest.raises(ObjectNotFound):
        [c async for c in store.open_stream("e/none", length=0)]


async def test_missing_objects(store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFound):
        await store.read("nope")
    with pytest.raises(ObjectNotFound):
        await store.head("nope")
    with pytest.raises(ObjectNotFound):
        [c async for c in store.open_stream("nope")]
    assert not await store.exists("nope")
    await store.delete("nope")  # idempotent


async def test_delete_list_and_put_bytes(store: ObjectStore) -> None:
    for key in ("p/1", "p/2", "q/1"):
        await store.put_bytes(key, key.encode())
    assert sorted([k async for k in store.list_keys("p/")]) == ["p/1", "p/2"]
    await store.delete("p/1")
    await store.delete("p/1")
    assert [k async for k in store.list_keys("p/")] == ["p/2"]
    assert await store.read("q/1") == b"q/1"


async def test_concurrent_puts(store: ObjectStore, tmp_path: Path) -> None:
    blobs = [os.urandom(30_000) for _ in range(12)]
    files = [_file(tmp_path, blob, f"f{i}") for i, blob in enumerate(blobs)]
    await asyncio.gather(*(store.put_file(f"c/{i}", p, sha256=s, size=30_000)
                           for i, (p, s) in enumerate(files)))
    for i, blob in enumerate(blobs):  # (the caller's file may have been moved into place)
        assert await store.read(f"c/{i}") == blob


async def test_large_file_keeps_memory_bounded(store: ObjectStore, tmp_path: Path) -> None:
    size = 160 * 1024 * 1024
    path = tmp_path / "large.bin"
    digest = hashlib.sha256()
    block = os.urandom(1024 * 1024)
    with path.open("wb") as f:
        for i in range(size // len(block)):
            chunk = block[:-1] + bytes([i % 256])
            f.write(chunk)
            digest.update(chunk)
    proc = psutil.Process()
    before = proc.memory_info().rss
    peak = before
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, proc.memory_info().rss)
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        await store.put_file("big/obj", path, sha256=digest.digest(), size=size)
    finally:
        done.set()
        sampler.join()
    grown = peak - before
    assert grown < 80 * 1024 * 1024, f"peak RSS grew by {grown / 2**20:.0f} MiB for a 160 MiB file"
    check = hashlib.sha256()
    async for chunk in store.open_stream("big/obj"):
        check.update(chunk)
    assert check.digest() == digest.digest()


async def test_unreachable_s3_is_storage_unavailable() -> None:
    from tests.fixtures.gateway import free_port

    settings = StorageSettings(backend="s3", endpoint_url=f"http://127.0.0.1:{free_port()}",
                               bucket="b", access_key="x", secret_key="y", create_bucket=False)
    store = await S3Store.open(settings)
    try:
        with pytest.raises(StorageUnavailable):
            await store.read("anything")
    finally:
        await store.close()


async def test_put_files_stores_each_and_reports_each_outcome(store: ObjectStore, tmp_path: Path) -> None:
    from dicomgw.storage import FileToStore

    files = []
    for i, data in enumerate([b"first" * 1000, b"second", b"third" * 70000]):
        path, digest = _file(tmp_path, data, f"f{i}.bin")
        files.append(FileToStore(f"batch/{i}/x.dcm", path, digest, len(data)))
    bad_path, _ = _file(tmp_path, b"tampered", "bad.bin")
    files.insert(1, FileToStore("batch/bad/x.dcm", bad_path, hashlib.sha256(b"other").digest(), 8))
    outcomes = await store.put_files(files)  # not hashed by the caller: the store checks every digest
    assert [type(o) for o in outcomes] == [type(None), StorageUnavailable, type(None), type(None)]
    assert await store.read("batch/0/x.dcm") == b"first" * 1000
    assert await store.read("batch/2/x.dcm") == b"third" * 70000
    assert not await store.exists("batch/bad/x.dcm")


async def test_stores_list_objects_with_their_size_and_modification_time(store: ObjectStore) -> None:
    started = datetime.now(UTC)
    contents = {"p/a/1": b"one", "p/b/2": b"two!", "pq/3": b"3", "q/4": b""}
    for key, data in contents.items():
        await store.put_bytes(key, data)
    listed = {info.key: info async for info in store.list_objects("p/")}
    assert {key: info.size for key, info in listed.items()} == {"p/a/1": 3, "p/b/2": 4}
    for info in listed.values():
        assert info.modified is not None and info.modified.tzinfo is not None
        assert abs(info.modified - started) < timedelta(seconds=30)
    assert {info.key async for info in store.list_objects("p")} == {"p/a/1", "p/b/2", "pq/3"}
    assert {info.key async for info in store.list_objects()} == set(contents)
    assert [info async for info in store.list_objects("nothing/")] == []
    head = await store.head("p/a/1")
    assert head.size == 3 and head.modified is not None
    assert abs(head.modified - listed["p/a/1"].modified) < timedelta(seconds=1)  # HTTP dates: seconds
