"""Storage lifecycle by age: hot, then compact (``compaction``), then the cold tier.

Each partition follows the deployment's policy (DICOMGW_COMPACT_AFTER_SECONDS,
DICOMGW_COLD_AFTER_SECONDS) unless it sets its own (`dicomgw partitions policy`). The sweep queues
``tier-cold`` work for originals that are verified (and replicated), old enough, hot, and already
looked at by compaction where it is on, so that what moves is the compact form. For each:

1. the stored object, in its form, is copied from the hot store to the cold one if (and only if) it
   gives back the original, and read back from the cold store;
2. one UPDATE sets the row's tier to cold, only if it is still hot and in the same form;
3. the hot copy is removed ``DICOMGW_COLD_DROP_AFTER_SECONDS`` later (``drop-hot``), and not while the
   cold copy does not verify.

Reads need no change: the primary store is then a TieredStore, which reads a key the hot store no
longer holds from the cold one (and says so in its metrics).
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import ColumnElement, CursorResult, select, update

from dicomgw.index.models import Instance, Partition
from dicomgw.index.repository import parse_work_key, work_key
from dicomgw.runtime import Runtime
from dicomgw.storage import ObjectNotFound, ObjectStore
from dicomgw.storage.tiered import TieredStore
from dicomgw_worker import metrics
from dicomgw_worker.copies import check, copy


async def cutoffs(runtime: Runtime, column: Any, default: float) -> dict[str, datetime]:
    """For each partition whose policy is on, the ingest time before which its originals are due."""
    now = datetime.now(UTC)
    async with runtime.index.sessions() as session:
        rows = (await session.execute(select(Partition.name, column))).all()
    out = {}
    for name, own in rows:
        seconds = default if own is None else own
        if seconds >= 0:
            out[name] = now - timedelta(seconds=seconds)
    return out


def hot_store(runtime: Runtime) -> ObjectStore:
    return runtime.store.hot if isinstance(runtime.store, TieredStore) else runtime.store


async def due(runtime: Runtime, *, limit: int = 1000) -> list[str]:
    """Keys of the originals the sweep queues for the cold tier."""
    if runtime.cold is None:
        return []
    compacting = await cutoffs(runtime, Partition.compact_after_seconds,
                               runtime.settings.compact.after_seconds)
    keys: list[str] = []
    for partition, cutoff in (await cutoffs(runtime, Partition.cold_after_seconds,
                                            runtime.settings.cold.after_seconds)).items():
        where: list[ColumnElement[bool]] = [
            Instance.partition_name == partition, Instance.tier == "hot",
            Instance.verify_status == "verified", Instance.created_at <= cutoff]
        if runtime.replica is not None:
            where.append(Instance.replica_status == "replicated")
        if partition in compacting:  # compaction first: the compact form is what moves
            where.append(Instance.compacted_at.is_not(None))
        async with runtime.index.sessions() as session:
            keys += [work_key(partition, uid) for (uid,) in (await session.execute(
                select(Instance.sop_instance_uid).where(*where).limit(limit - len(keys)))).all()]
        if len(keys) >= limit:
            break
    return keys


async def _tier(runtime: Runtime, key: str) -> str | None:
    partition, uid = parse_work_key(key)
    async with runtime.index.sessions() as session:
        return (await session.execute(select(Instance.tier).where(
            Instance.partition_name == partition, Instance.sop_instance_uid == uid))).scalar()


async def move_cold(runtime: Runtime, key: str) -> str:
    """Move one original's primary copy to the cold tier: 'moved', 'already', 'source-bad' or 'gone'."""
    from dicomgw_worker.compaction import _row
    from dicomgw_worker.tasks import enqueue

    if runtime.cold is None:
        return "no-cold-tier"
    original = await _row(runtime, key)
    tier = await _tier(runtime, key)
    if original is None or tier is None:
        return "gone"
    if tier == "cold":
        return "already"
    if not await copy(hot_store(runtime), runtime.cold, original, runtime.settings.spool_path, original.form):
        return "source-bad"  # verification finds the hot copy bad and repairs it; moved later
    if await check(runtime.cold, original, original.form) != "good":
        raise RuntimeError("the cold copy read back does not give back the original")
    partition, uid = parse_work_key(key)
    async with runtime.index.sessions.begin() as session:
        result = await session.execute(update(Instance).where(
            Instance.partition_name == partition, Instance.sop_instance_uid == uid,
            Instance.tier == "hot", Instance.stored_form == original.form).values(tier="cold"))
    if not cast("CursorResult[Any]", result).rowcount:
        return "already"  # moved or changed meanwhile: the next sweep looks again
    await enqueue(runtime, "drop-hot", [key], delay=runtime.settings.cold.drop_after_seconds)
    metrics.tier_moves.labels(tier="cold").inc()
    return "moved"


async def drop_hot(runtime: Runtime, key: str) -> str:
    """Remove the hot copy of an original the index says the cold tier holds."""
    from dicomgw_worker.compaction import _row

    original = await _row(runtime, key)
    if runtime.cold is None or original is None or await _tier(runtime, key) != "cold":
        return "nothing"
    if await check(runtime.cold, original, original.form) != "good":
        # never remove the hot copy while the cold one is not right: verification repairs it
        raise RuntimeError("the cold copy does not give back the original")
    with contextlib.suppress(ObjectNotFound):
        await hot_store(runtime).delete(original.copy_in(original.form).key)
    return "dropped"
