"""Compaction: a verified original is kept in a compact form that gives back its bytes exactly.

Never on the ingest path: the sweep queues ``compact`` work for originals that are verified (and,
with a replica, replicated) and older than ``DICOMGW_COMPACT_AFTER_SECONDS``. For each:

1. the verbatim copy is read and checked against the index's SHA-256 (a bad one is left to repair);
2. ``dicomgw.compact.compact`` builds the compact form, which it has already decoded back into the
   identical bytes; nothing smaller by 5 % means the original stays verbatim (and is not tried again);
3. the form is written to the primary (and, by ``DICOMGW_COMPACT_REPLICA``, to the replica), and read
   back from each store and reconstructed to the original's SHA-256;
4. one UPDATE records the forms, codec and size, only if the row is still verbatim;
5. the verbatim copies are removed ``DICOMGW_COMPACT_DROP_AFTER_SECONDS`` later (``drop_verbatim``),
   so that a read that began with the row as it was still finds them.

A crash anywhere leaves either the row verbatim with its copies intact, or the row compact with the
verbatim copies waiting for their drop. Running any step twice does no harm; a compact object left
unreferenced by a crash before the UPDATE is removed by the orphan sweep once past its grace period
(or overwritten when the original is compacted again).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import CursorResult, select, update

from dicomgw import compact, originals
from dicomgw.index.models import Instance, Partition
from dicomgw.index.repository import parse_work_key, work_key
from dicomgw.runtime import Runtime
from dicomgw.storage import ObjectNotFound, ObjectStore
from dicomgw_worker import metrics
from dicomgw_worker.copies import Original, check

log = logging.getLogger("dicomgw.worker")

# originals compacted at once: CPU-bound in threads, so about one per core
CONCURRENCY = 2


async def due(runtime: Runtime, *, limit: int = 1000) -> list[str]:
    """Keys of the originals the sweep queues for compaction (each partition by its own policy, or
    the deployment's)."""
    from dicomgw_worker.tiering import cutoffs

    settings = runtime.settings.compact
    keys: list[str] = []
    for partition, cutoff in (await cutoffs(runtime, Partition.compact_after_seconds,
                                            settings.after_seconds)).items():
        query = (select(Instance.sop_instance_uid)
                 .where(Instance.partition_name == partition, Instance.stored_form == originals.VERBATIM,
                        Instance.compacted_at.is_(None), Instance.tier == "hot",
                        Instance.verify_status == "verified", Instance.created_at <= cutoff,
                        Instance.size <= settings.max_bytes)
                 .limit(limit - len(keys)))
        if runtime.replica is not None:
            query = query.where(Instance.replica_status == "replicated")
        async with runtime.index.sessions() as session:
            keys += [work_key(partition, uid) for (uid,) in (await session.execute(query)).all()]
        if len(keys) >= limit:
            break
    return keys


async def _row(runtime: Runtime, key: str) -> Original | None:
    from dicomgw_worker.tasks import _originals

    return (await _originals(runtime, [key])).get(key)


async def _write_checked(store: ObjectStore, original: Original, data: bytes) -> None:
    """Write the compact form and read it back: it must give back the original's bytes."""
    target = original.copy_in(originals.COMPACT)
    await store.put_bytes(target.key, data)
    originals.forget(store, target)
    if await check(store, original, originals.COMPACT) != "good":
        raise RuntimeError("the compact form read back does not give back the original")


async def compact_one(runtime: Runtime, key: str) -> str:
    """Compact one original: 'compacted', 'kept-verbatim', 'already', 'source-bad' or 'gone'."""
    original = await _row(runtime, key)
    if original is None:
        return "gone"
    if original.form == originals.COMPACT:
        return "already"
    settings = runtime.settings.compact
    try:
        data = await runtime.store.read(original.object_key)
    except ObjectNotFound:
        return "source-bad"  # verification finds it missing and repairs it
    if len(data) != original.size or hashlib.sha256(data).digest() != original.sha256:
        return "source-bad"
    now = datetime.now(UTC)
    built = (await asyncio.to_thread(compact.compact, data, codecs=tuple(settings.codecs))
             if len(data) <= settings.max_bytes else None)
    partition, uid = parse_work_key(key)
    where = (Instance.partition_name == partition, Instance.sop_instance_uid == uid,
             Instance.stored_form == originals.VERBATIM)
    if built is None:
        async with runtime.index.sessions.begin() as session:
            await session.execute(update(Instance).where(*where).values(compacted_at=now))
        metrics.compaction_results.labels(result="kept-verbatim").inc()
        return "kept-verbatim"
    await _write_checked(runtime.store, original, built.data)
    replica_form = original.replica_form
    replicated = original.replica_status == "replicated"
    if runtime.replica is not None and settings.replica == "compact" and replicated:
        await _write_checked(runtime.replica, original, built.data)
        replica_form = originals.COMPACT
    async with runtime.index.sessions.begin() as session:
        result = await session.execute(update(Instance).where(*where).values(
            stored_form=originals.COMPACT, replica_form=replica_form, codec=built.codec,
            stored_size=built.compact_size, compacted_at=now))
        changed = cast("CursorResult[Any]", result).rowcount
    if not changed:  # compacted meanwhile by another worker, or gone: its objects are its own
        return "already"
    from dicomgw_worker.tasks import enqueue

    await enqueue(runtime, "drop-verbatim", [key], delay=settings.drop_after_seconds)
    metrics.compaction_results.labels(result="compacted").inc()
    metrics.compaction_bytes.labels(kind="original").inc(original.size)
    metrics.compaction_bytes.labels(kind="stored").inc(built.compact_size)
    return "compacted"


async def compact_many(runtime: Runtime, keys: list[str]) -> dict[str, str | BaseException]:
    """``compact_one`` for several originals, a few at a time; each key's outcome or exception."""
    limit = asyncio.Semaphore(CONCURRENCY)

    async def one(key: str) -> str | BaseException:
        async with limit:
            try:
                return await compact_one(runtime, key)
            except Exception as exc:
                return exc

    return dict(zip(keys, await asyncio.gather(*(one(k) for k in keys)), strict=True))


async def drop_verbatim(runtime: Runtime, key: str) -> str:
    """Remove the verbatim copies of an original whose row says each store keeps it compact."""
    original = await _row(runtime, key)
    if original is None:
        return "gone"
    dropped = 0
    for store, form in ((runtime.store, original.form), (runtime.replica, original.replica_form)):
        if store is not None and form == originals.COMPACT:
            if await check(store, original, originals.COMPACT) != "good":
                # never remove the verbatim bytes while the compact copy is not right: verification
                # finds it and repairs it, and the next drop (after the sweep) tries again
                raise RuntimeError("the compact copy does not give back the original")
            with contextlib.suppress(ObjectNotFound):
                await store.delete(original.object_key)
                dropped += 1
    return "dropped" if dropped else "nothing"
