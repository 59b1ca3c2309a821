"""The orphan sweep: originals in the object stores that no index row references, indexed or removed.

A process killed between storing an original and committing its index row (kill -9 mid-STOW, an index
that went away at commit time) leaves an object that nothing references; its client was never told it
was stored. Only keys of the layout the ingest path writes (``storage.original_key``) are considered:
derived data (collection manifests and volumes) and every other key are never touched. Such a key is
an orphan when no instance row references it and it is older than the grace period
(``DICOMGW_WORKER_ORPHAN_GRACE_SECONDS``): a younger one may belong to a STOW still under way.

In the primary store an orphan is

- **indexed** when it is a complete instance whose bytes match the SHA-256 in its key, in an archive
  partition where its SOP Instance UID is not indexed yet: the very rows the interrupted request would
  have committed, through the same ``IndexRepository.commit`` (outbox work included). This is safe
  against a concurrent ingest of the same instance: both commit the same key, the index keeps one row
  and the other side finds it "present" and deletes nothing. It is harmless when the grace period was
  shorter than a slow STOW, or when the index was restored from a backup older than the store, where
  removing would destroy acknowledged originals.
- **removed** otherwise: another object is indexed as that instance (a lost conflict, or the same bytes
  under another key), the bytes do not match their key or are not an instance the archive accepts, or
  the partition is a research collection (its builder, the owner of its content, stores it again).
- **kept**, and reported, when its partition is unknown to the index: not ours to judge.

In the replica store an orphan is removed: the replica only ever holds copies of indexed originals.
In the cold tier, a copy is referenced only by a row whose original is in the cold tier in that form;
any other (a move to the cold tier that did not commit, for an original that stayed hot) is removed.

Just before removing, the index and the object's modification time are checked again (a retry of the
same instance may have stored it again and be about to commit); just after, the index is checked once
more, and an original indexed meanwhile gets a verification, which repairs a missing copy or reports it.
Two sweeps at once do no harm: each decision is taken again by the index or the store at the moment it
is carried out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import select

from dicomgw.audit import AuditEvent
from dicomgw.dicom.parse import ParsedInstance, parse_instance
from dicomgw.errors import InstanceRejected
from dicomgw.index.models import Instance, OutboxItem
from dicomgw.index.repository import DEFAULT, StoredObject, work_key
from dicomgw.multipart import spool_single
from dicomgw.originals import COMPACT, VERBATIM
from dicomgw.originals import original_key as original_key_of
from dicomgw.partitions import valid_name
from dicomgw.runtime import Runtime
from dicomgw.storage import ObjectInfo, ObjectNotFound, ObjectStore, original_key

log = logging.getLogger("dicomgw.orphans")
T = TypeVar("T")

# the keys of originals (storage.original_key), in the default partition or in a named one
_ORIGINAL_KEY = re.compile(
    r"^(?:partitions/(?P<partition>[^/]+)/)?originals/(?P<study>[^/]+)/(?P<series>[^/]+)/"
    r"(?P<sop>[^/]+)/(?P<sha256>[0-9a-f]{64})\.dcm$")
# where originals live: the default partition's, then every other partition's (filtered by the pattern)
PREFIXES = ("originals/", "partitions/")
# keys looked up in the index at once
BATCH = 500
# orphans indexed or removed per run unless told otherwise; the next run carries on
LIMIT = 10_000
# who the audit trail names for an original the sweep indexed
WHO = "orphan-sweep"

PRIMARY, REPLICA, COLD = "primary", "replica", "cold"
INDEXED, REMOVED, KEPT, SKIPPED = "indexed", "removed", "kept", "skipped"


@dataclass(frozen=True)
class OriginalKey:
    """What the key of an original says: where it belongs and the SHA-256 of its bytes."""

    key: str
    partition: str
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sha256: bytes
    # the form of the stored object at ``key`` (dicomgw.originals): the original as received, or a
    # compact copy of it (``key`` then ends in ".dgwc")
    form: str = VERBATIM

    @property
    def object_key(self) -> str:
        """The original's key, the one its index row names."""
        return original_key_of(self.key)[0]


def parse_original_key(key: str) -> OriginalKey | None:
    """The parts of a key the ingest path writes for an original (or compaction, for its compact
    copy), or None for any other key."""
    base, form = original_key_of(key)
    if form == COMPACT:
        parsed = parse_original_key(base)
        return None if parsed is None else replace(parsed, key=key, form=COMPACT)
    match = _ORIGINAL_KEY.match(key)
    if match is None:
        return None
    named = match["partition"]
    if named is not None and (named == DEFAULT or not valid_name(named)):
        return None
    partition = named or DEFAULT
    study, series, sop, sha = match["study"], match["series"], match["sop"], match["sha256"]
    if original_key(study, series, sop, sha, partition) != key:
        return None
    return OriginalKey(key, partition, study, series, sop, bytes.fromhex(sha))


@dataclass(frozen=True)
class Orphan:
    """One orphan and what became of it (in a dry run: what would have)."""

    store: str  # primary | replica | cold
    key: str
    size: int
    modified: datetime
    action: str  # indexed | removed | kept | skipped (no longer an orphan when its turn came)
    reason: str


@dataclass
class OrphanReport:
    dry_run: bool
    grace_seconds: float
    # objects of the originals layout listed, per store
    listed: dict[str, int] = field(default_factory=dict)
    # unreferenced but younger than the grace period (STOW requests under way), per store
    young: dict[str, int] = field(default_factory=dict)
    orphans: list[Orphan] = field(default_factory=list)
    # False when the limit stopped the sweep before the end of the listing
    complete: bool = True

    def totals(self) -> dict[tuple[str, str], tuple[int, int]]:
        """(store, action) -> (objects, bytes)."""
        out: dict[tuple[str, str], tuple[int, int]] = {}
        for orphan in self.orphans:
            count, size = out.get((orphan.store, orphan.action), (0, 0))
            out[(orphan.store, orphan.action)] = (count + 1, size + orphan.size)
        return out

    def summary(self) -> dict[str, int]:
        """Counts for a task result or a log line: found, and each action, summed over the stores."""
        out = {"found": len(self.orphans), "bytes": sum(o.size for o in self.orphans)}
        for action in (INDEXED, REMOVED, KEPT, SKIPPED):
            out[action] = sum(1 for o in self.orphans if o.action == action)
        return out

    def as_json(self) -> dict[str, Any]:
        return {"dryRun": self.dry_run, "graceSeconds": self.grace_seconds, "complete": self.complete,
                "listed": self.listed, "young": self.young, **self.summary(),
                "orphans": [{"store": o.store, "key": o.key, "size": o.size,
                             "modified": o.modified.isoformat(), "action": o.action, "reason": o.reason}
                            for o in self.orphans]}


@dataclass(frozen=True)
class _Candidate:
    original: OriginalKey
    info: ObjectInfo
    # the row indexed as this SOP Instance UID in the partition, if any
    row: _Row | None


@dataclass(frozen=True)
class _Row:
    object_key: str
    sha256: bytes
    forms: dict[str, str]  # the form each store keeps the original in: {"primary": ..., "replica": ...}
    tier: str = "hot"  # where the primary copy is: hot, or cold (the cold tier holds it)

    def references(self, original: OriginalKey, store: str) -> bool:
        """Whether this row keeps ``original``'s object in ``store``: its verbatim key (a verbatim copy
        whose compact form is committed stays referenced until its drop), or its compact key while the
        row says that store keeps it compact. The cold tier holds the primary copy of a cold row, in
        the form the row says, and nothing else."""
        if self.object_key != original.object_key:
            return False
        if store == COLD:
            return self.tier == "cold" and (original.form == COMPACT) == (self.forms[PRIMARY] == COMPACT)
        return original.form == VERBATIM or self.forms[store] == COMPACT


async def _rows(runtime: Runtime, keys: Sequence[OriginalKey]) -> dict[tuple[str, str], _Row]:
    """The index rows of the keys' instances: (partition, SOP Instance UID) -> (object key, SHA-256).

    A lookup by primary key: the key of an original names its partition and SOP Instance UID, and only
    the row of that instance can reference it.
    """
    uids: dict[str, set[str]] = {}
    for original in keys:
        uids.setdefault(original.partition, set()).add(original.sop_instance_uid)
    found: dict[tuple[str, str], _Row] = {}
    async with runtime.index.engine.connect() as connection:
        for partition, batch in uids.items():
            rows = await connection.execute(
                select(Instance.sop_instance_uid, Instance.object_key, Instance.sha256, Instance.stored_form,
                       Instance.replica_form, Instance.tier)
                .where(Instance.partition_name == partition, Instance.sop_instance_uid.in_(sorted(batch))))
            for uid, key, sha, form, replica_form, tier in rows:
                found[(partition, uid)] = _Row(key, bytes(sha), {PRIMARY: form, REPLICA: replica_form}, tier)
    return found


async def _named_by_any_row(runtime: Runtime, keys: Sequence[str]) -> set[str]:
    """Those of ``keys`` that any instance row names as its object, whatever its partition or UID.

    Belt and braces over ``_rows`` for the few keys found unreferenced (object_key has no index: this
    reads the table, once per batch of candidates, never per listed key).
    """
    if not keys:
        return set()
    async with runtime.index.engine.connect() as connection:
        rows = await connection.execute(select(Instance.object_key).where(Instance.object_key.in_(keys)))
        return {key for (key,) in rows}


@contextlib.asynccontextmanager
async def _closing(iterator: AsyncIterator[T]) -> AsyncIterator[AsyncIterator[T]]:
    """``iterator``, closed on the way out when it can be (a listing left early holds a page)."""
    try:
        yield iterator
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()


class _Sweep:
    def __init__(self, runtime: Runtime, cutoff: datetime, report: OrphanReport) -> None:
        self.runtime = runtime
        self.cutoff = cutoff
        self.report = report
        # keys a dry run would have indexed: their replica copies would then be referenced
        self.would_index: set[str] = set()
        self.audited = False

    # -- finding ---------------------------------------------------------------------------------
    async def candidates(self, name: str, store: ObjectStore) -> AsyncGenerator[list[_Candidate], None]:
        """Old unreferenced originals of ``store``, a batch at a time."""
        batch: list[tuple[OriginalKey, ObjectInfo]] = []
        for prefix in PREFIXES:
            async with _closing(store.list_objects(prefix)) as listing:
                async for info in listing:
                    original = parse_original_key(info.key)
                    if original is None:
                        continue
                    self.report.listed[name] += 1
                    batch.append((original, info))
                    if len(batch) >= BATCH:
                        yield await self._unreferenced(name, batch)
                        batch = []
        if batch:
            yield await self._unreferenced(name, batch)

    async def _unreferenced(self, name: str, batch: list[tuple[OriginalKey, ObjectInfo]]) -> list[_Candidate]:
        rows = await _rows(self.runtime, [original for original, _ in batch])
        old: list[_Candidate] = []
        for original, info in batch:
            row = rows.get((original.partition, original.sop_instance_uid))
            if row is not None and row.references(original, name):
                continue
            if info.modified is None or info.modified > self.cutoff:
                self.report.young[name] += 1
                continue
            old.append(_Candidate(original, info, row))
        # (a row of its own instance that names this very key was judged above: in the cold tier a
        # verbatim copy of an original kept compact there is a leftover, whatever the key says)
        named = await _named_by_any_row(self.runtime, [
            c.original.key for c in old if c.original.form == VERBATIM
            and (c.row is None or c.row.object_key != c.original.object_key)])
        return [c for c in old if c.original.key not in named]

    # -- deciding --------------------------------------------------------------------------------
    async def primary(self, candidate: _Candidate) -> Orphan:
        original = candidate.original
        if original.form == COMPACT:  # left by a compaction that did not commit: the original is
            return await self._remove(PRIMARY, self.runtime.store, candidate,  # where its row says
                                      "a compact copy no index row keeps")
        if candidate.row is not None:
            return await self._remove(PRIMARY, self.runtime.store, candidate,
                                      "another object is indexed as this instance")
        partition = await self.runtime.partitions.get(original.partition)
        if partition is None:
            return self._orphan(PRIMARY, candidate, KEPT, "the index knows no such partition")
        if partition.kind != "archive" or partition.read_only:
            return await self._remove(PRIMARY, self.runtime.store, candidate,
                                      "left over in a collection, whose builder stores it again")
        spooled = await self._spool(original.key)
        if spooled is None:
            return self._orphan(PRIMARY, candidate, SKIPPED, "gone meanwhile")
        path, size, sha256 = spooled
        try:
            if sha256 != original.sha256:
                return await self._remove(PRIMARY, self.runtime.store, candidate,
                                          "its bytes do not match the SHA-256 its key names")
            try:
                parsed = await asyncio.to_thread(parse_instance, path)
            except InstanceRejected as exc:
                log.debug("orphan not acceptable: %s", exc.detail)
                return await self._remove(PRIMARY, self.runtime.store, candidate,
                                          "not an instance the archive accepts")
        finally:
            path.unlink(missing_ok=True)
        if (parsed.study_instance_uid, parsed.series_instance_uid, parsed.sop_instance_uid) != (
                original.study_instance_uid, original.series_instance_uid, original.sop_instance_uid):
            return await self._remove(PRIMARY, self.runtime.store, candidate,
                                      "its UIDs are not those its key names")
        return await self._index(candidate, parsed, size)

    async def replica(self, candidate: _Candidate) -> Orphan:
        assert self.runtime.replica is not None
        if candidate.original.key in self.would_index:
            return self._orphan(REPLICA, candidate, SKIPPED, "the copy of an original the sweep indexes")
        if await self.runtime.partitions.get(candidate.original.partition) is None:
            return self._orphan(REPLICA, candidate, KEPT, "the index knows no such partition")
        return await self._remove(REPLICA, self.runtime.replica, candidate,
                                  "a copy of no indexed original")

    async def cold(self, candidate: _Candidate) -> Orphan:
        assert self.runtime.cold is not None
        if await self.runtime.partitions.get(candidate.original.partition) is None:
            return self._orphan(COLD, candidate, KEPT, "the index knows no such partition")
        return await self._remove(COLD, self.runtime.cold, candidate,
                                  "a cold copy of no original kept in the cold tier")

    # -- acting ----------------------------------------------------------------------------------
    def _orphan(self, store: str, candidate: _Candidate, action: str, reason: str) -> Orphan:
        info = candidate.info
        assert info.modified is not None
        return Orphan(store, info.key, info.size, info.modified, action, reason)

    async def _index(self, candidate: _Candidate, parsed: ParsedInstance, size: int) -> Orphan:
        original = candidate.original
        reason = "a complete instance whose client was never answered: indexed as it would have been"
        if self.report.dry_run:
            self.would_index.add(original.key)
            return self._orphan(PRIMARY, candidate, INDEXED, reason)
        [outcome] = await self.runtime.index.commit(
            [StoredObject(parsed=parsed, object_key=original.key, size=size, sha256=original.sha256)],
            original.partition)
        if outcome.status == "stored":
            self._audit(original)
            return self._orphan(PRIMARY, candidate, INDEXED, reason)
        if outcome.status == "present" and outcome.object_key == original.key:
            return self._orphan(PRIMARY, candidate, SKIPPED, "indexed meanwhile")
        # another object became this instance meanwhile: this one is referenced by nothing, for good
        return await self._remove(PRIMARY, self.runtime.store, candidate,
                                  "another object was indexed as this instance meanwhile")

    async def _remove(self, name: str, store: ObjectStore, candidate: _Candidate, reason: str) -> Orphan:
        if self.report.dry_run:
            return self._orphan(name, candidate, REMOVED, reason)
        original = candidate.original
        # Just before: the index again (a retry may have committed it), and the object's age (a retry
        # may have stored it again and be about to commit: then it is young, and left to the next run).
        if await self._referenced(original, name):
            return self._orphan(name, candidate, SKIPPED, "indexed meanwhile")
        try:
            now = await store.head(original.key)
        except ObjectNotFound:
            return self._orphan(name, candidate, SKIPPED, "gone meanwhile")
        if now.modified is None or now.modified > self.cutoff:
            return self._orphan(name, candidate, SKIPPED, "written again meanwhile")
        await store.delete(original.key)
        log.debug("orphan removed", extra={"store": name, "key": original.key})
        if await self._referenced(original, name):
            # committed between the check and the delete: its verification repairs the copy from the
            # other store, or reports it lost
            log.critical("an original was indexed while the orphan sweep removed it; verifying it",
                         extra={"store": name})
            await self._verify_soon(original)
        return self._orphan(name, candidate, REMOVED, reason)

    async def _referenced(self, original: OriginalKey, store: str) -> bool:
        row = (await _rows(self.runtime, [original])).get((original.partition, original.sop_instance_uid))
        return row is not None and row.references(original, store)

    async def _verify_soon(self, original: OriginalKey) -> None:
        index = self.runtime.index
        async with index.sessions.begin() as session:
            await session.execute(index._insert(OutboxItem).values(
                task="verify", key=work_key(original.partition, original.sop_instance_uid))
                .on_conflict_do_nothing())

    async def _spool(self, key: str) -> tuple[Path, int, bytes] | None:
        """The object in a spool file (bounded memory), its size and SHA-256; None when it is gone."""
        spool = self.runtime.settings.spool_path
        spool.mkdir(parents=True, exist_ok=True)
        try:  # spooled as an upload is: the file goes if the read fails
            part = await spool_single(self.runtime.store.open_stream(key), spool)
        except ObjectNotFound:
            return None
        return part.path, part.size, part.sha256

    def _audit(self, original: OriginalKey) -> None:
        if not self.runtime.settings.audit.enabled:
            return
        self.runtime.audit.record(AuditEvent(
            event="transferred", action="C", outcome=0, who=WHO, who_kind="system", source="",
            method="", route="orphan-sweep", studies=(original.study_instance_uid,),
            detail="an original stored by a request that was never answered, indexed by the orphan sweep"))
        self.audited = True


async def sweep_orphans(runtime: Runtime, *, grace_seconds: float | None = None, dry_run: bool = False,
                        limit: int = LIMIT, now: datetime | None = None) -> OrphanReport:
    """Find the orphans of the primary store, then of the replica and the cold tier; index or remove them.

    ``grace_seconds`` defaults to the worker setting; ``dry_run`` decides without changing anything;
    after ``limit`` orphans indexed or removed the sweep stops (the report says it is not complete)
    and the next run carries on. ``now`` is the moment ages are measured from.
    """
    grace = runtime.settings.worker.orphan_grace_seconds if grace_seconds is None else grace_seconds
    if grace < 0:
        raise ValueError("the grace period cannot be negative")
    cutoff = (now or datetime.now(UTC)) - timedelta(seconds=grace)
    report = OrphanReport(dry_run=dry_run, grace_seconds=grace)
    sweep = _Sweep(runtime, cutoff, report)
    stores: list[tuple[str, ObjectStore]] = [(PRIMARY, runtime.store)]
    if runtime.replica is not None:
        stores.append((REPLICA, runtime.replica))
    if runtime.cold is not None:
        stores.append((COLD, runtime.cold))
    done = 0  # indexed or removed (in a dry run: would be)
    try:
        for name, store in stores:
            report.listed[name] = report.young[name] = 0
            decide = {PRIMARY: sweep.primary, REPLICA: sweep.replica, COLD: sweep.cold}[name]
            async with contextlib.aclosing(sweep.candidates(name, store)) as batches:
                async for batch in batches:
                    for candidate in batch:
                        if done >= limit:
                            report.complete = False
                            return report
                        orphan = await decide(candidate)
                        report.orphans.append(orphan)
                        done += orphan.action in (INDEXED, REMOVED)
        return report
    finally:
        if sweep.audited:
            try:
                await runtime.audit.flush()
            except Exception:
                log.exception("the orphan sweep's audit events wait for the next flush")
        log.info("orphan sweep", extra={"dry_run": dry_run, "complete": report.complete,
                                        "listed": sum(report.listed.values()),
                                        "young": sum(report.young.values()), **report.summary()})
