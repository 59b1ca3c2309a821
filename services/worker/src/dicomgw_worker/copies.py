"""Hashing and copying originals between stores, always checked against the SHA-256 in the index."""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from dicomgw.storage import ObjectNotFound, ObjectStore


@dataclass(frozen=True)
class Original:
    """What the index says an original is."""

    key: str  # the outbox key: SOP Instance UID, with its partition outside the default one
    object_key: str
    size: int
    sha256: bytes
    replica_status: str = "pending"


async def check(store: ObjectStore, original: Original) -> str:
    """'good', 'bad' (other bytes) or 'missing' for the copy of ``original`` in ``store``."""
    digest = hashlib.sha256()
    size = 0
    try:
        async for chunk in store.open_stream(original.object_key):
            digest.update(chunk)
            size += len(chunk)
    except ObjectNotFound:
        return "missing"
    return "good" if size == original.size and digest.digest() == original.sha256 else "bad"


async def copy(source: ObjectStore, target: ObjectStore, original: Original, spool_dir: Path) -> bool:
    """Copy the original from ``source`` to ``target`` if, and only if, the source bytes are right.

    The bytes pass through a spool file (bounded memory) and are hashed on the way; a source copy
    that does not match the index is never propagated. Returns whether the copy was made.
    """
    spool_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - cheap, usually a no-op
    fd, name = tempfile.mkstemp(dir=spool_dir, suffix=".copy")
    path = Path(name)
    try:
        digest = hashlib.sha256()
        size = 0
        with os.fdopen(fd, "wb") as out:
            try:
                async for chunk in source.open_stream(original.object_key):
                    digest.update(chunk)
                    size += len(chunk)
                    await asyncio.to_thread(out.write, chunk)
            except ObjectNotFound:
                return False
        if size != original.size or digest.digest() != original.sha256:
            return False
        await target.put_file(original.object_key, path, sha256=original.sha256, size=size)
        return True
    finally:
        path.unlink(missing_ok=True)  # noqa: ASYNC240 - one metadata call
