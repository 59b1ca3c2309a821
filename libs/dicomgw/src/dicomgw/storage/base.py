"""The ObjectStore protocol every storage adapter implements, and the keys originals live under.

Keys of originals are content-addressed (``originals/{study}/{series}/{sop}/{sha256}.dcm``) so that an
original can never be replaced in place: a different object for the same SOP Instance UID lands under a
different key, and the index decides which one is the instance. The originals of a partition other
than ``default`` live under ``partitions/{name}/originals/...``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class FileToStore:
    """One file for ``put_files``: what ``put_file`` takes."""

    key: str
    path: Path
    sha256: bytes
    size: int


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    # when the object was last written (S3 LastModified, a file's mtime), timezone-aware; None when the
    # store cannot tell
    modified: datetime | None = None


class ObjectNotFound(KeyError):
    """No object under that key."""


@runtime_checkable
class ObjectStore(Protocol):
    """Byte storage for originals and derived data. Every method is safe to call concurrently."""

    async def put_file(self, key: str, path: Path, *, sha256: bytes, size: int,
                       hashed: bool = False) -> None:
        """Store the file at ``path`` under ``key``; durable when it returns.

        ``sha256`` is the digest of the file, checked by the store (S3 ``x-amz-checksum-sha256``; the
        local adapter hashes what it wrote). ``hashed`` says the caller computed ``sha256`` from
        these very bytes as it wrote the file (the STOW spooler does), so a store that can adopt the
        file without copying it need not read it again. The caller's file may be moved or consumed.
        """
        ...

    async def put_files(self, files: Sequence[FileToStore], *,
                        hashed: bool = False) -> list[Exception | None]:
        """Store several files as ``put_file`` does each, at once where the store can.

        One outcome per file, in order: None once it is durable, else the error
        (StorageUnavailable) that ``put_file`` would have raised. A STOW request's parts are stored
        a batch at a time: one hop to a thread for a local folder, concurrent PUTs for S3.
        """
        ...

    async def put_bytes(self, key: str, data: bytes) -> None:
        """Store a small object (derived data) under ``key``; durable when it returns."""
        ...

    def open_stream(
        self, key: str, *, start: int = 0, length: int | None = None, chunk_size: int = 1 << 20
    ) -> AsyncIterator[bytes]:
        """Yield the object's bytes (or the range ``start``..``start+length``) in chunks."""
        ...

    async def read_range(self, key: str, start: int, length: int) -> bytes:
        """Read ``length`` bytes at ``start``: one ranged GET."""
        ...

    async def read(self, key: str) -> bytes:
        """Read a whole (small) object."""
        ...

    async def head(self, key: str) -> ObjectInfo:
        """Size and modification time of the object; raises ObjectNotFound."""
        ...

    async def exists(self, key: str) -> bool: ...

    async def delete(self, key: str) -> None:
        """Remove the object; no error if it is already gone."""
        ...

    def list_keys(self, prefix: str = "") -> AsyncIterator[str]:
        """Yield every key under ``prefix``."""
        ...

    def list_objects(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        """Yield every object under ``prefix`` with its size and modification time, a page at a time
        (memory stays bounded however many there are), in no particular order."""
        ...

    async def close(self) -> None: ...


def partition_prefix(partition: str) -> str:
    """Where a partition's objects live ("" for the default partition)."""
    return "" if partition == "default" else f"partitions/{partition}/"


def original_key(study_uid: str, series_uid: str, sop_uid: str, sha256_hex: str,
                 partition: str = "default") -> str:
    return f"{partition_prefix(partition)}originals/{study_uid}/{series_uid}/{sop_uid}/{sha256_hex}.dcm"
