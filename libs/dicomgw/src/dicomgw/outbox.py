"""The outbox: background work written with the index rows it concerns, taken by a relay or a loop."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select, update

from dicomgw.index.models import OutboxItem
from dicomgw.index.repository import IndexRepository


@dataclass(frozen=True)
class Work:
    id: int
    task: str
    key: str
    attempts: int


async def due(index: IndexRepository, *, limit: int = 100,
              tasks: Collection[str] | None = None) -> list[Work]:
    """The rows due now, oldest first (only those of ``tasks``, if given)."""
    now = datetime.now(UTC)
    query = select(OutboxItem).where(OutboxItem.available_at <= now)
    if tasks is not None:
        query = query.where(OutboxItem.task.in_(list(tasks)))
    async with index.sessions() as session:
        rows = await session.execute(query.order_by(OutboxItem.id).limit(limit))
        return [Work(r.id, r.task, r.key, r.attempts) for r in rows.scalars()]


async def lease(index: IndexRepository, ids: list[int], seconds: float) -> None:
    """Not due again for ``seconds`` (handed to a worker that removes them when done)."""
    if not ids:
        return
    async with index.sessions.begin() as session:
        await session.execute(update(OutboxItem).where(OutboxItem.id.in_(ids))
                              .values(available_at=datetime.now(UTC) + timedelta(seconds=seconds)))


async def done(index: IndexRepository, work: Work) -> None:
    async with index.sessions.begin() as session:
        await session.execute(delete(OutboxItem).where(OutboxItem.id == work.id))


async def done_many(index: IndexRepository, works: list[Work]) -> None:
    async with index.sessions.begin() as session:
        await session.execute(delete(OutboxItem).where(OutboxItem.id.in_([w.id for w in works])))


async def retry_later(index: IndexRepository, work: Work) -> None:
    """Back off exponentially (capped at an hour); the row stays, so the work is never lost."""
    delay = timedelta(seconds=min(3600, 2 ** min(work.attempts + 1, 12)))
    async with index.sessions.begin() as session:
        await session.execute(
            update(OutboxItem).where(OutboxItem.id == work.id)
            .values(attempts=OutboxItem.attempts + 1, available_at=datetime.now(UTC) + delay)
        )


async def depth(index: IndexRepository) -> int:
    from sqlalchemy import func

    async with index.sessions() as session:
        return int((await session.execute(select(func.count()).select_from(OutboxItem))).scalar_one())
