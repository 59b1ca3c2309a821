"""LocalStore specifics the shared contract does not cover: key safety, adoption, crash leftovers."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from dicomgw.errors import StorageUnavailable
from dicomgw.storage.local import LocalStore


@pytest.mark.parametrize("key", ["", "/etc/passwd", "../outside", "a/../../b", ".tmp/x"])
async def test_keys_cannot_escape_the_root(tmp_path: Path, key: str) -> None:
    store = LocalStore(tmp_path / "root")
    with pytest.raises(ValueError):
        await store.put_bytes(key, b"x")
    assert not (tmp_path / "outside").exists()


async def test_file_on_the_same_filesystem_is_moved_in(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "root")
    src = tmp_path / "upload.part"
    src.write_bytes(b"payload")
    await store.put_file("a/b", src, sha256=hashlib.sha256(b"payload").digest(), size=7)
    assert not src.exists()
    assert (tmp_path / "root" / "a" / "b").read_bytes() == b"payload"


async def test_bad_digest_leaves_the_callers_file_and_no_object(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "root")
    src = tmp_path / "upload.part"
    src.write_bytes(b"payload")
    with pytest.raises(StorageUnavailable):
        await store.put_file("a/b", src, sha256=hashlib.sha256(b"other").digest(), size=7)
    assert src.read_bytes() == b"payload"
    assert not await store.exists("a/b")
    assert [k async for k in store.list_keys()] == []


async def test_close_removes_unacknowledged_temporaries(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "root")
    (tmp_path / "root" / ".tmp" / "crashed.part").write_bytes(b"half")
    await store.put_bytes("k", b"v")
    assert [k async for k in store.list_keys()] == ["k"]  # temporaries are never listed
    await store.close()
    assert list((tmp_path / "root" / ".tmp").iterdir()) == []
    assert await store.read("k") == b"v"
