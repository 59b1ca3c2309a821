"""Checksum verification: re-read an original, re-hash it, compare with the index."""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime

from sqlalchemy import select, update

from dicomgw.index.models import Instance
from dicomgw.runtime import Runtime
from dicomgw.storage import ObjectNotFound

log = logging.getLogger("dicomgw.worker.verify")


async def verify_instance(runtime: Runtime, sop_instance_uid: str) -> str:
    """Verify one original; returns 'verified', 'mismatch', 'missing' or 'gone' (no index row)."""
    async with runtime.index.sessions() as session:
        row = (await session.execute(
            select(Instance.object_key, Instance.sha256, Instance.size)
            .where(Instance.sop_instance_uid == sop_instance_uid)
        )).first()
    if row is None:
        return "gone"
    digest = hashlib.sha256()
    size = 0
    try:
        async for chunk in runtime.store.open_stream(row.object_key):
            digest.update(chunk)
            size += len(chunk)
        status = "verified" if digest.digest() == bytes(row.sha256) and size == row.size else "mismatch"
    except ObjectNotFound:
        status = "missing"
    if status != "verified":
        log.error("original failed verification", extra={"status": status})
    async with runtime.index.sessions.begin() as session:
        await session.execute(
            update(Instance).where(Instance.sop_instance_uid == sop_instance_uid)
            .values(verify_status=status, verified_at=datetime.now(UTC))
        )
    return status
