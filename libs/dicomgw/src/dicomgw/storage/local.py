"""Local-folder ObjectStore: each object a file, written to a temporary name, fsynced, then renamed."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Generator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from dicomgw.errors import StorageUnavailable
from dicomgw.processes import pid_alive
from dicomgw.storage.base import FileToStore, ObjectInfo, ObjectNotFound

_COPY_CHUNK = 1 << 20
# objects listed per hop to a thread by list_objects
_LIST_PAGE = 1000


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalStore:
    """Objects as files under ``root``; keys are relative paths with '/' separators."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        # this store's temporaries, in a folder named after its process: several server processes
        # may share the root
        (self.root / ".tmp").mkdir(exist_ok=True)
        self._tmp = Path(tempfile.mkdtemp(dir=self.root / ".tmp", prefix=f"{os.getpid()}-"))
        self._remove_temporaries_of_dead_processes()
        self._device = os.stat(self.root).st_dev

    def _path(self, key: str) -> Path:
        if not key or key.startswith("/") or ".." in key.split("/") or key.startswith(".tmp"):
            raise ValueError(f"invalid object key {key!r}")
        return self.root / key

    # -- writing ---------------------------------------------------------------------------------
    def _make_parent(self, dest: Path, dirty: set[Path]) -> None:
        """Create ``dest``'s folder; every folder whose entries changed is added to ``dirty``."""
        missing = []
        folder = dest.parent
        while not folder.is_dir():
            missing.append(folder)
            folder = folder.parent
        for new in reversed(missing):
            with contextlib.suppress(FileExistsError):  # a concurrent writer made it: fsync it all the same
                new.mkdir()
            dirty.add(new.parent)  # the new folder's entry in its parent
        dirty.add(dest.parent)  # the file's entry, renamed in next

    def _install(self, tmp: Path, dest: Path, dirty: set[Path] | None = None) -> None:
        """Rename ``tmp`` to ``dest``; the folders' entries are fsynced now, or by the caller that
        passes ``dirty`` (a batch fsyncs each folder once, after all its renames)."""
        changed: set[Path] = set()
        self._make_parent(dest, changed)
        os.replace(tmp, dest)
        if dirty is None:
            for folder in changed:
                _fsync_dir(folder)
        else:
            dirty.update(changed)

    def _adopt(self, path: Path, dest: Path, sha256: bytes, size: int, hashed: bool,
               dirty: set[Path] | None = None) -> bool:
        """Move a caller's file into place when it is on our filesystem: no second copy.

        Unless the caller hashed the bytes as it wrote them, they are hashed again here (reading is
        cheap: they are in the page cache). The file is fsynced before the rename, so the rename
        never exposes unwritten or unexpected data.
        """
        try:
            if os.stat(path).st_dev != self._device:
                return False
            with open(path, "rb+") as f:
                if os.fstat(f.fileno()).st_size != size:
                    raise StorageUnavailable("size mismatch writing an object")
                if not hashed:
                    digest = hashlib.sha256()
                    while chunk := f.read(_COPY_CHUNK):
                        digest.update(chunk)
                    if digest.digest() != sha256:
                        raise StorageUnavailable("checksum mismatch writing an object")
                os.fsync(f.fileno())
        except FileNotFoundError:
            return False
        self._install(path, dest, dirty)
        return True

    def _put_file_sync(self, key: str, path: Path, sha256: bytes, size: int, hashed: bool,
                       dirty: set[Path] | None = None) -> None:
        dest = self._path(key)
        if self._adopt(path, dest, sha256, size, hashed, dirty):
            return
        fd, tmp_name = tempfile.mkstemp(dir=self._tmp, suffix=".part")
        tmp = Path(tmp_name)
        try:
            digest = hashlib.sha256()
            written = 0
            with os.fdopen(fd, "wb") as out, open(path, "rb") as src:
                while chunk := src.read(_COPY_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    written += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            if written != size or digest.digest() != sha256:
                raise StorageUnavailable(f"checksum mismatch writing {key}")
            self._install(tmp, dest, dirty)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _put_files_sync(self, files: Sequence[FileToStore], hashed: bool) -> list[Exception | None]:
        outcomes: list[Exception | None] = []
        dirty: set[Path] = set()
        for f in files:
            try:
                self._put_file_sync(f.key, Path(f.path), f.sha256, f.size, hashed, dirty)
                outcomes.append(None)
            except OSError as exc:
                outcomes.append(StorageUnavailable(f"local store write failed: {exc.strerror}"))
            except StorageUnavailable as exc:
                outcomes.append(exc)
        # Each folder once, after all the renames into it: a batch's files share their series'
        # folder, and on ext4 the first fsync commits the journal for all the others.
        try:
            for folder in dirty:
                _fsync_dir(folder)
        except OSError as exc:
            failed = StorageUnavailable(f"local store write failed: {exc.strerror}")
            return [failed if o is None else o for o in outcomes]
        return outcomes

    async def put_files(self, files: Sequence[FileToStore], *,
                        hashed: bool = False) -> list[Exception | None]:
        return await asyncio.to_thread(self._put_files_sync, files, hashed)

    async def put_file(self, key: str, path: Path, *, sha256: bytes, size: int,
                       hashed: bool = False) -> None:
        try:
            await asyncio.to_thread(self._put_file_sync, key, Path(path), sha256, size, hashed)
        except OSError as exc:
            raise StorageUnavailable(f"local store write failed: {exc.strerror}") from exc

    def _put_bytes_sync(self, key: str, data: bytes) -> None:
        dest = self._path(key)
        fd, tmp_name = tempfile.mkstemp(dir=self._tmp, suffix=".part")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            self._install(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    async def put_bytes(self, key: str, data: bytes) -> None:
        try:
            await asyncio.to_thread(self._put_bytes_sync, key, data)
        except OSError as exc:
            raise StorageUnavailable(f"local store write failed: {exc.strerror}") from exc

    # -- reading ---------------------------------------------------------------------------------
    def _read_range_sync(self, key: str, start: int, length: int) -> bytes:
        try:
            with open(self._path(key), "rb") as f:
                f.seek(start)
                return f.read(length)
        except FileNotFoundError as exc:
            raise ObjectNotFound(key) from exc

    async def read_range(self, key: str, start: int, length: int) -> bytes:
        return await asyncio.to_thread(self._read_range_sync, key, start, length)

    async def read(self, key: str) -> bytes:
        def _read() -> bytes:
            try:
                return self._path(key).read_bytes()
            except FileNotFoundError as exc:
                raise ObjectNotFound(key) from exc

        return await asyncio.to_thread(_read)

    def _open_at(self, key: str, start: int, n: int) -> tuple[BinaryIO, bytes]:
        try:
            f = open(self._path(key), "rb")  # closed by open_stream
        except FileNotFoundError as exc:
            raise ObjectNotFound(key) from exc
        try:
            if start:
                f.seek(start)
            return f, f.read(n)
        except BaseException:
            f.close()
            raise

    async def open_stream(
        self, key: str, *, start: int = 0, length: int | None = None, chunk_size: int = 1 << 20
    ) -> AsyncIterator[bytes]:
        # Opening and the first read share one hop to a thread: most originals fit one chunk, and a
        # whole-study retrieve spent more time hopping than reading.
        first = chunk_size if length is None else min(chunk_size, length)
        f, chunk = await asyncio.to_thread(self._open_at, key, start, first)
        try:
            remaining = None if length is None else length - len(chunk)
            while chunk:
                yield chunk
                if len(chunk) < first or remaining == 0:
                    break  # a short read is the end of the file
                n = chunk_size if remaining is None else min(chunk_size, remaining)
                chunk = await asyncio.to_thread(f.read, n)
                if remaining is not None:
                    remaining -= len(chunk)
        finally:
            f.close()

    async def head(self, key: str) -> ObjectInfo:
        try:
            st = await asyncio.to_thread(os.stat, self._path(key))
        except FileNotFoundError as exc:
            raise ObjectNotFound(key) from exc
        return ObjectInfo(key=key, size=st.st_size, modified=datetime.fromtimestamp(st.st_mtime, UTC))

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self._path(key).is_file)

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._path(key).unlink, True)

    async def list_keys(self, prefix: str = "") -> AsyncIterator[str]:
        def _walk() -> list[str]:
            out = []
            for dirpath, dirnames, filenames in os.walk(self.root):
                if Path(dirpath) == self.root and ".tmp" in dirnames:
                    dirnames.remove(".tmp")
                for name in filenames:
                    rel = os.path.relpath(os.path.join(dirpath, name), self.root).replace(os.sep, "/")
                    if rel.startswith(prefix):
                        out.append(rel)
            return sorted(out)

        for key in await asyncio.to_thread(_walk):
            yield key

    def _walk_objects(self, prefix: str) -> Generator[ObjectInfo, None, None]:
        """Objects under ``prefix``, walking only the folder the prefix names (not the whole root)."""
        folder = prefix.rpartition("/")[0]
        start = self._path(folder) if folder else self.root
        for dirpath, dirnames, filenames in os.walk(start):
            if Path(dirpath) == self.root and ".tmp" in dirnames:
                dirnames.remove(".tmp")
            dirnames.sort()
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                key = os.path.relpath(path, self.root).replace(os.sep, "/")
                if not key.startswith(prefix):
                    continue
                try:
                    st = os.stat(path)
                except FileNotFoundError:  # removed while we walked
                    continue
                yield ObjectInfo(key=key, size=st.st_size,
                                 modified=datetime.fromtimestamp(st.st_mtime, UTC))

    async def list_objects(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        walk = self._walk_objects(prefix)
        try:
            while page := await asyncio.to_thread(lambda: list(itertools.islice(walk, _LIST_PAGE))):
                for info in page:
                    yield info
        finally:
            walk.close()

    def _remove_temporaries_of_dead_processes(self) -> None:
        """Temporaries left by a crash mid-write were never acknowledged: they go."""
        for folder in self._tmp.parent.iterdir():
            pid = folder.name.partition("-")[0]
            if folder.is_dir() and pid.isdigit() and not pid_alive(int(pid)):
                shutil.rmtree(folder, ignore_errors=True)
            elif not folder.is_dir():  # a temporary of a version that kept them all in one folder
                folder.unlink(missing_ok=True)

    async def close(self) -> None:
        await asyncio.to_thread(shutil.rmtree, self._tmp, True)
