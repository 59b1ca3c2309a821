"""A verified on-disk cache of DICOM objects, content-addressed by SHA-256, shared by processes.

An object is kept at ``root/ab/abcdef....dcm`` (``ab`` the first two hex digits of its SHA-256). Every
object is checked against its SHA-256 when it arrives and again each time it is read: a file damaged on
disk is removed and reported as missing, so the caller fetches it again. Writes go to a temporary file
in the same folder and are renamed into place (``os.replace``): a reader sees a whole file or none.
Changes to what the cache holds (a new object, an eviction) happen under an exclusive ``fcntl`` lock on
``root/.lock``, so several processes (DataLoader workers, several jobs of one node) share one cache.

Size limit: past ``max_bytes`` the least recently used objects are removed until the cache is back under
90 % of it. "Used" is the file's modification time, set to now on every read (atime is unreliable
with ``noatime``/``relatime`` mounts); the running total is kept in ``root/.size`` so that a scan of
the folder is needed only when the limit is crossed.

Small derived files (a collection's manifest, a series' stacks) are kept with ``write_file`` and
``read_file`` under other sub-folders; they are not counted or evicted.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from dicomgw_client.errors import IntegrityError

log = logging.getLogger("dicomgw_client.cache")

SHA256 = re.compile(r"^[0-9a-f]{64}$")
# eviction stops below this fraction of the limit, so that the next puts do not each scan the folder
LOW_WATER = 0.9
# temporary files left by a killed writer are removed by the next eviction after this long
STALE_TEMP_SECONDS = 3600.0


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _temporary(path: Path, data: bytes) -> str:
    """``data`` in a new temporary file next to ``path`` (whose folder is made): its name."""
    try:
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    return temporary


def write_atomic(path: Path, data: bytes) -> None:
    """``data`` at ``path``, whole or not at all (a temporary file in the same folder, renamed)."""
    temporary = _temporary(path, data)
    try:
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


class Staged(NamedTuple):
    """An object written to a temporary file (``Cache.stage``), not yet in its place."""

    sha256: str
    path: Path
    temporary: str
    size: int


class Cache:
    """The objects under ``root``; ``max_bytes`` None keeps everything."""

    def __init__(self, root: Path, max_bytes: int | None = None) -> None:
        self.root = Path(root).expanduser()
        self.max_bytes = max_bytes
        self.root.mkdir(parents=True, exist_ok=True)

    # ---- objects ---------------------------------------------------------------------------------
    def path(self, sha256: str) -> Path:
        if not SHA256.match(sha256):
            raise ValueError(f"not a SHA-256 in hex: {sha256!r}")
        return self.root / sha256[:2] / f"{sha256}.dcm"

    def get(self, sha256: str) -> bytes | None:
        """The object's bytes, checked against ``sha256``; None when absent or damaged (then removed)."""
        path = self.path(sha256)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        if sha256_hex(data) != sha256:
            log.warning("cached object %s is damaged (its bytes do not have its SHA-256): fetched again",
                        path)
            self._remove(path, sha256)
            return None
        with contextlib.suppress(FileNotFoundError):
            os.utime(path)  # most recently used
        return data

    def put(self, sha256: str, data: bytes, *, checked: bool = False) -> None:
        """Keep ``data`` as the object ``sha256``; IntegrityError when its bytes are not that. ``checked``:
        the caller has just computed the SHA-256 of ``data`` and it is ``sha256`` (not hashed again)."""
        self.put_many([(sha256, data)], checked=checked)

    def put_many(self, objects: list[tuple[str, bytes]], *, checked: bool = False) -> None:
        """``put`` of each (SHA-256, bytes), under one lock and one update of the running total."""
        if not checked:
            for sha256, data in objects:
                if sha256_hex(data) != sha256:
                    raise IntegrityError(f"the bytes received for {sha256} do not have that SHA-256")
        staged: list[Staged] = []
        try:
            for sha256, data in objects:
                staged.append(self.stage(sha256, data))
        except BaseException:
            self.discard(staged)
            raise
        self.commit(staged)

    def stage(self, sha256: str, data: bytes) -> Staged:
        """``data``, whose SHA-256 the caller has just checked to be ``sha256``, written to a temporary
        file next to its place, without the lock (several threads or processes write at once): kept by
        ``commit``, or removed by ``discard``."""
        path = self.path(sha256)
        return Staged(sha256, path, _temporary(path, data), len(data))

    def commit(self, staged: list[Staged]) -> None:
        """The staged objects renamed into place under one lock and one update of the running total (then
        eviction, past the limit). Whatever is not renamed is removed."""
        if not staged:
            return
        pending = list(staged)
        try:
            with self.lock():
                added = 0
                while pending:
                    one = pending[-1]
                    existed = one.path.exists()
                    os.replace(one.temporary, one.path)
                    pending.pop()
                    if not existed:
                        added += one.size
                if added:
                    total = self._add_size(added)
                    if self.max_bytes is not None and total > self.max_bytes:
                        self._evict(keep={one.path for one in staged})
        finally:
            self.discard(pending)

    @staticmethod
    def discard(staged: list[Staged]) -> None:
        """Staged objects given up: their temporary files removed."""
        for one in staged:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(one.temporary)

    def __contains__(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    # ---- small derived files ---------------------------------------------------------------------
    def read_file(self, relative: str) -> bytes | None:
        try:
            return (self.root / relative).read_bytes()
        except FileNotFoundError:
            return None

    def write_file(self, relative: str, data: bytes) -> None:
        write_atomic(self.root / relative, data)

    def files(self, pattern: str) -> list[Path]:
        return sorted(self.root.glob(pattern))

    # ---- locking, size, eviction -------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive across processes (fcntl.flock on ``root/.lock``), for changes to what is kept."""
        with open(self.root / ".lock", "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _objects(self) -> Iterator[os.DirEntry[str]]:
        for folder in os.scandir(self.root):
            if len(folder.name) != 2 or not folder.is_dir():
                continue
            for entry in os.scandir(folder.path):
                if entry.name.endswith(".dcm") and not entry.name.startswith("."):
                    yield entry
                elif entry.name.endswith(".tmp"):
                    with contextlib.suppress(FileNotFoundError):
                        if time.time() - entry.stat().st_mtime > STALE_TEMP_SECONDS:
                            os.unlink(entry.path)

    def size(self) -> int:
        """Bytes of the objects kept (scanned: exact)."""
        return sum(e.stat().st_size for e in self._objects())

    def _add_size(self, delta: int) -> int:
        """Add ``delta`` to the running total (under the lock) and return it; scanned when unknown."""
        counter = self.root / ".size"
        try:
            total = int(counter.read_text()) + delta
        except (FileNotFoundError, ValueError):
            total = self.size()
        total = max(total, 0)
        write_atomic(counter, str(total).encode())
        return total

    def _remove(self, path: Path, sha256: str) -> None:
        with self.lock():
            try:
                size = path.stat().st_size
                # still the damaged file? another process may have put a good one meanwhile
                if sha256_hex(path.read_bytes()) != sha256:
                    path.unlink()
                    self._add_size(-size)
            except FileNotFoundError:
                pass

    def _evict(self, keep: set[Path]) -> None:
        """Remove the least recently used objects until under LOW_WATER of the limit (lock held)."""
        assert self.max_bytes is not None
        entries = []
        for entry in self._objects():
            with contextlib.suppress(FileNotFoundError):
                stat = entry.stat()
                entries.append((stat.st_mtime, stat.st_size, entry.path))
        total = sum(size for _, size, _ in entries)
        target = int(self.max_bytes * LOW_WATER)
        removed = 0
        for _, size, name in sorted(entries):
            if total <= target:
                break
            if Path(name) in keep:
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)
                total -= size
                removed += 1
        write_atomic(self.root / ".size", str(total).encode())
        log.info("cache %s: %d objects evicted, %d bytes kept", self.root, removed, total)
