"""Integrity status of the archive: how many originals are verified, replicated, damaged, and how late."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import case, func, select

from dicomgw.index.models import Instance, OutboxItem
from dicomgw.index.repository import IndexRepository


async def integrity_status(index: IndexRepository, *, replica_enabled: bool) -> dict[str, Any]:
    async with index.sessions() as session:
        verify = dict((await session.execute(
            select(Instance.verify_status, func.count()).group_by(Instance.verify_status)
        )).all())
        replica = dict((await session.execute(
            select(Instance.replica_status, func.count()).group_by(Instance.replica_status)
        )).all())
        oldest = (await session.execute(
            select(func.min(Instance.created_at)).where(Instance.verified_at.is_(None))
        )).scalar_one()
        repaired = (await session.execute(select(func.sum(Instance.repaired_count)))).scalar_one()
        outbox = dict((await session.execute(
            select(OutboxItem.task, func.count()).group_by(OutboxItem.task)
        )).all())
        total = (await session.execute(select(func.count()).select_from(Instance))).scalar_one()
        storage = await _storage(session, replica_enabled)
    if oldest is not None and oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=UTC)
    return {
        "instances": int(total),
        "verified": int(verify.get("verified", 0)) + int(verify.get("repaired", 0)),
        "pending": int(verify.get("pending", 0)),
        "mismatched": int(verify.get("mismatch", 0)),
        "missing": int(verify.get("missing", 0)),
        "lost": int(verify.get("lost", 0)),
        "repaired": int(repaired or 0),
        "replica": {
            "enabled": replica_enabled,
            "replicated": int(replica.get("replicated", 0)),
            "pending": int(replica.get("pending", 0)) if replica_enabled else 0,
            "missing": int(replica.get("missing", 0)) + int(replica.get("mismatch", 0)),
        },
        "oldest_unverified_seconds": (
            round((datetime.now(UTC) - oldest).total_seconds(), 1) if oldest is not None else 0.0
        ),
        "outbox": {task: int(n) for task, n in outbox.items()},
        "storage": storage,
    }


async def _storage(session: Any, replica_enabled: bool) -> dict[str, Any]:
    """Bytes received, and what each store keeps by form (dicomgw.originals) and the compact ones by
    codec: originals, their bytes as received, and the bytes stored. The primary copies are counted
    in the store of their tier: "primary" (hot) or "cold"."""
    stored = case((Instance.stored_form == "compact", Instance.stored_size), else_=Instance.size)
    replica_stored = case((Instance.replica_form == "compact", Instance.stored_size), else_=Instance.size)

    async def by(column: Any, stored_bytes: Any, *where: Any) -> dict[str, dict[str, int]]:
        rows = await session.execute(
            select(column, func.count(), func.sum(Instance.size), func.sum(stored_bytes))
            .where(*where).group_by(column))
        return {str(key): {"originals": int(n), "original_bytes": int(o or 0), "bytes": int(b or 0)}
                for key, n, o, b in rows.all()}

    received = (await session.execute(select(func.count(), func.sum(Instance.size)))).one()
    # verbatim originals compaction has not looked at yet (all of them while it is off)
    uncompacted = (await session.execute(select(func.count()).where(
        Instance.stored_form == "verbatim", Instance.compacted_at.is_(None)))).scalar_one()
    return {
        "originals": int(received[0]), "received_bytes": int(received[1] or 0),
        "not_compacted_yet": int(uncompacted),
        "primary": await by(Instance.stored_form, stored, Instance.tier == "hot"),
        "cold": await by(Instance.stored_form, stored, Instance.tier == "cold"),
        "replica": await by(Instance.replica_form, replica_stored, Instance.replica_status == "replicated")
        if replica_enabled else {},
        "codecs": await by(Instance.codec, Instance.stored_size, Instance.stored_form == "compact"),
    }
