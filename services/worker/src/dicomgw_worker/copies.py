"""Hashing and copying originals between stores, always checked against the SHA-256 in the index."""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from dicomgw import compact, originals
from dicomgw.storage import ObjectNotFound, ObjectStore


@dataclass(frozen=True)
class Original:
    """What the index says an original is, and the form each store keeps it in."""

    key: str  # the outbox key: SOP Instance UID, with its partition outside the default one
    object_key: str
    size: int
    sha256: bytes
    replica_status: str = "pending"
    form: str = originals.VERBATIM  # in the primary store
    replica_form: str = originals.VERBATIM

    def copy_in(self, form: str) -> originals.Copy:
        return originals.Copy(self.object_key, form)


async def check(store: ObjectStore, original: Original, form: str = originals.VERBATIM) -> str:
    """'good', 'bad' (other bytes, or a compact copy that does not decode) or 'missing' for the copy
    of ``original`` that ``store`` keeps in ``form``."""
    got = await originals.digest(store, original.copy_in(form))
    if got is None:
        return "missing"
    return "good" if got == (original.size, original.sha256) else "bad"


async def copy(source: ObjectStore, target: ObjectStore, original: Original, spool_dir: Path,
               form: str = originals.VERBATIM) -> bool:
    """Copy the stored object of ``original`` in ``form`` from ``source`` to ``target`` (where it is
    then kept in the same form) if, and only if, it gives back the original's bytes. Returns whether
    the copy was made.

    A verbatim copy passes through a spool file (bounded memory) and is hashed on the way; a compact
    one (bounded by DICOMGW_COMPACT_MAX_BYTES) is decoded in memory and checked before it is written.
    A source copy that does not match the index is never propagated.
    """
    if form == originals.COMPACT:
        key = original.copy_in(form).key
        try:
            data = await source.read(key)
        except ObjectNotFound:
            return False
        try:
            rebuilt = await asyncio.to_thread(compact.reconstruct, data)
        except compact.CompactCorrupt:
            return False
        if len(rebuilt) != original.size or hashlib.sha256(rebuilt).digest() != original.sha256:
            return False
        await target.put_bytes(key, data)
        originals.forget(target, original.copy_in(form))
        return True
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
