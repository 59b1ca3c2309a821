"""Integrity status of the archive: how many originals are verified, replicated, damaged, and how late."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select

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
    }
