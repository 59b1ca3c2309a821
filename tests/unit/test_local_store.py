"""LocalStore specifics the shared contract does not cover: key safety, adoption, crash leftovers."""

from __future__ import annotations

import hashlib
import subprocess
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


def _dead_pid() -> int:
    dead = subprocess.Popen(["true"])
    dead.wait()
    return dead.pid


async def test_unacknowledged_temporaries_of_dead_processes_go_and_live_ones_stay(tmp_path: Path) -> None:
    crashed = tmp_path / "root" / ".tmp" / f"{_dead_pid()}-x1y2"
    crashed.mkdir(parents=True)
    (crashed / "crashed.part").write_bytes(b"half")
    other = LocalStore(tmp_path / "root")  # another server process, writing at this moment
    (other._tmp / "in-flight.part").write_bytes(b"busy")
    store = LocalStore(tmp_path / "root")
    assert not crashed.exists()
    await store.put_bytes("k", b"v")
    assert [k async for k in store.list_keys()] == ["k"]  # temporaries are never listed
    await store.close()
    assert (other._tmp / "in-flight.part").exists()
    assert await store.read("k") == b"v"


async def test_every_folder_a_new_object_changes_is_fsynced_once_per_batch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new study folder's entry in its parent is as durable as the file (a crash must not lose the
    folder and with it the acknowledged file); a batch fsyncs each changed folder once."""
    from dicomgw.storage import FileToStore, local

    synced: list[Path] = []
    monkeypatch.setattr(local, "_fsync_dir", lambda p: synced.append(Path(p)))
    store = LocalStore(tmp_path / "root")
    files = []
    for i in range(3):
        src = tmp_path / f"{i}.part"
        src.write_bytes(b"x%d" % i)
        files.append(FileToStore(f"originals/st/se/sop{i}/h.dcm", src,
                                 hashlib.sha256(b"x%d" % i).digest(), 2))
    assert await store.put_files(files, hashed=True) == [None, None, None]
    root = store.root
    expected = {root, root / "originals", root / "originals/st", root / "originals/st/se",
                *(root / f"originals/st/se/sop{i}" for i in range(3))}
    assert sorted(synced) == sorted(expected)  # each once
