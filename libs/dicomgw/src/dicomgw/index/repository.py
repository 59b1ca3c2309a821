"""The index's write path and instance look-ups: one transaction per STOW request, outbox rows included."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, bindparam, distinct, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from dicomgw.dicom.parse import ParsedInstance
from dicomgw.index.db import session_factory
from dicomgw.index.models import Instance, OutboxItem, Series, Study
from dicomgw.originals import Copy

# the tables, for Core statements (multi-row INSERTs, the duplicate look-up)
STUDIES, SERIES, INSTANCES, OUTBOX = (cast(Table, m.__table__) for m in (Study, Series, Instance, OutboxItem))

# the partition every row is in unless said otherwise (dicomgw.partitions.DEFAULT)
DEFAULT = "default"


def work_key(partition: str, sop_instance_uid: str) -> str:
    """The outbox key of an instance: its UID in the default partition, ``{partition}/{uid}`` otherwise.

    UIDs are digits and dots, so the slash cannot be part of one; keys written before partitions
    existed stay valid.
    """
    return sop_instance_uid if partition == DEFAULT else f"{partition}/{sop_instance_uid}"


def parse_work_key(key: str) -> tuple[str, str]:
    partition, _, uid = key.rpartition("/")
    return (partition or DEFAULT), uid


@dataclass(frozen=True)
class StoredObject:
    """An original that is durable in the object store and waits for its index row."""

    parsed: ParsedInstance
    object_key: str
    size: int
    sha256: bytes


@dataclass(frozen=True)
class CommitOutcome:
    sop_instance_uid: str
    # "stored": new row; "present": identical bytes were already indexed;
    # "conflict": another object with this SOP Instance UID is indexed
    status: str
    object_key: str


@dataclass(frozen=True)
class InstanceRecord:
    partition: str
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    object_key: str
    size: int
    sha256: bytes
    metadata_json: str
    layout: dict[str, Any]
    instance_number: int | None
    # the form the primary store keeps the original in (dicomgw.originals: verbatim or compact)
    stored_form: str = "verbatim"

    @property
    def copy(self) -> Copy:
        """The primary store's copy of the original."""
        return Copy(self.object_key, self.stored_form, self.size)


class IndexRepository:
    """Reads and writes of the index that the services share (QIDO has its own query builder)."""

    def __init__(self, engine: AsyncEngine, new_work: Sequence[str] = ("verify",)) -> None:
        self.engine = engine
        # outbox tasks written with every new instance row
        self.new_work = tuple(new_work)
        self.sessions: async_sessionmaker[AsyncSession] = session_factory(engine)
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
        instances = INSTANCES
        self._known = select(instances.c.sop_instance_uid, instances.c.sha256).where(
            instances.c.partition_name == bindparam("partition"),
            instances.c.sop_instance_uid.in_(bindparam("uids", expanding=True)))
        # SQLite has one writer: requests of this process take turns here rather than in SQLite's
        # busy handler, which sleeps up to 100 ms between tries
        self._writer: contextlib.AbstractAsyncContextManager[object] = (
            asyncio.Lock() if engine.dialect.name == "sqlite" else contextlib.nullcontext())

    async def known_sha256(self, sop_uids: Sequence[str], partition: str = DEFAULT) -> dict[str, bytes]:
        """SHA-256 of the indexed original of each SOP Instance UID indexed already in the partition."""
        if not sop_uids:
            return {}
        async with self.engine.connect() as connection:
            rows = await connection.execute(self._known, {"partition": partition, "uids": list(sop_uids)})
            return {uid: bytes(sha) for uid, sha in rows.all()}

    async def commit(self, objects: Sequence[StoredObject], partition: str = DEFAULT) -> list[CommitOutcome]:
        """Index every stored object in one transaction; the outbox gets a verify task for each new one.

        Every object goes into ``partition`` (which must exist).
        """
        if not objects:
            return []
        ins = self._insert
        studies: dict[str, dict[str, Any]] = {}
        series: dict[str, dict[str, Any]] = {}
        # the first object of each SOP Instance UID is offered to the index; a later one in the same
        # request is judged against whatever the index holds once the first has been offered
        first: dict[str, StoredObject] = {}
        for obj in objects:
            studies.setdefault(obj.parsed.study_instance_uid,
                               {**obj.parsed.study, "partition_name": partition})
            series.setdefault(obj.parsed.series_instance_uid,
                              {**obj.parsed.series, "partition_name": partition})
            first.setdefault(obj.parsed.sop_instance_uid, obj)
        rows = [{**obj.parsed.instance, "partition_name": partition, "object_key": obj.object_key,
                 "size": obj.size, "sha256": obj.sha256, "metadata_json": obj.parsed.metadata_json,
                 "layout_json": json.dumps(obj.parsed.layout, separators=(",", ":")),
                 "verify_status": "pending"} for obj in first.values()]
        instances = INSTANCES
        # Multi-row statements (SQLAlchemy's insertmanyvalues): one compiled INSERT per table, not an
        # ORM statement per row, which cost a third of a STOW request's time under the GIL.
        async with self._writer, self.sessions.begin() as session:
            await session.execute(ins(STUDIES).on_conflict_do_nothing(), list(studies.values()))
            await session.execute(ins(SERIES).on_conflict_do_nothing(), list(series.values()))
            inserted = set((await session.execute(
                ins(instances).on_conflict_do_nothing().returning(instances.c.sop_instance_uid), rows,
            )).scalars())
            work = [{"task": task, "key": work_key(partition, uid)}
                    for uid in first if uid in inserted for task in self.new_work]
            if work:
                await session.execute(ins(OUTBOX).on_conflict_do_nothing(), work)
            await self._refresh_aggregates(session, partition, sorted(
                {obj.parsed.study_instance_uid for uid, obj in first.items() if uid in inserted}))
            existing = {}
            others = [obj.parsed.sop_instance_uid for obj in objects
                      if obj.parsed.sop_instance_uid not in inserted
                      or first[obj.parsed.sop_instance_uid] is not obj]
            if others:
                existing = {uid: (bytes(sha), key) for uid, sha, key in (await session.execute(
                    select(Instance.sop_instance_uid, Instance.sha256, Instance.object_key).where(
                        Instance.partition_name == partition,
                        Instance.sop_instance_uid.in_(sorted(set(others)))))).all()}
        outcomes: list[CommitOutcome] = []
        for obj in objects:
            uid = obj.parsed.sop_instance_uid
            if uid in inserted and first[uid] is obj:
                outcomes.append(CommitOutcome(uid, "stored", obj.object_key))
                continue
            sha, key = existing[uid]
            outcomes.append(CommitOutcome(uid, "present" if sha == obj.sha256 else "conflict", key))
        return outcomes

    async def _refresh_aggregates(self, session: AsyncSession, partition: str,
                                  study_uids: list[str]) -> None:
        """Recount what QIDO-RS reports of the studies that got instances, and of their series.

        The study rows are locked first (PostgreSQL; SQLite has a single writer anyway), so that two
        requests adding to one study count each other's instances instead of overwriting them.
        """
        if not study_uids:
            return
        st, se, inst = STUDIES.c, SERIES.c, INSTANCES.c
        await session.execute(select(st.study_instance_uid).where(
            st.partition_name == partition, st.study_instance_uid.in_(study_uids))
            .order_by(st.study_instance_uid).with_for_update())
        counts = (await session.execute(
            select(inst.study_instance_uid, func.count(distinct(inst.series_instance_uid)), func.count())
            .where(inst.partition_name == partition, inst.study_instance_uid.in_(study_uids))
            .group_by(inst.study_instance_uid))).all()
        values: dict[str, dict[str, set[str]]] = {u: {"m": set(), "c": set()} for u in study_uids}
        for study, modality in (await session.execute(
                select(se.study_instance_uid, se.modality).distinct().where(
                    se.partition_name == partition, se.study_instance_uid.in_(study_uids),
                    se.modality.is_not(None)))).all():
            values[study]["m"].add(modality)
        for study, sop_class in (await session.execute(
                select(inst.study_instance_uid, inst.sop_class_uid).distinct().where(
                    inst.partition_name == partition, inst.study_instance_uid.in_(study_uids)))).all():
            values[study]["c"].add(sop_class)
        await session.execute(
            update(STUDIES).where(st.partition_name == bindparam("p"),
                                  st.study_instance_uid == bindparam("u"))
            .values(num_series=bindparam("ns"), num_instances=bindparam("ni"),
                    modalities=bindparam("m"), sop_classes=bindparam("c")),
            [{"p": partition, "u": study, "ns": n_series, "ni": n_instances,
              "m": "\\".join(sorted(values[study]["m"])), "c": "\\".join(sorted(values[study]["c"]))}
             for study, n_series, n_instances in counts])
        series_counts = (await session.execute(
            select(inst.series_instance_uid, func.count())
            .where(inst.partition_name == partition, inst.study_instance_uid.in_(study_uids))
            .group_by(inst.series_instance_uid))).all()
        await session.execute(
            update(SERIES).where(se.partition_name == bindparam("p"),
                                 se.series_instance_uid == bindparam("u"))
            .values(num_instances=bindparam("n")),
            [{"p": partition, "u": series, "n": n} for series, n in series_counts])

    async def instances(
        self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None,
        *, partition: str = DEFAULT,
    ) -> list[InstanceRecord]:
        """Instances of a study, series or one instance of a partition, in series then number order."""
        query = select(Instance).where(Instance.partition_name == partition,
                                       Instance.study_instance_uid == study_uid)
        if series_uid is not None:
            query = query.where(Instance.series_instance_uid == series_uid)
        if sop_uid is not None:
            query = query.where(Instance.sop_instance_uid == sop_uid)
        query = query.order_by(
            Instance.series_instance_uid, Instance.instance_number, Instance.sop_instance_uid
        )
        async with self.sessions() as session:
            rows = (await session.execute(query)).scalars().all()
        return [
            InstanceRecord(
                partition=r.partition_name,
                study_instance_uid=r.study_instance_uid,
                series_instance_uid=r.series_instance_uid,
                sop_instance_uid=r.sop_instance_uid,
                sop_class_uid=r.sop_class_uid,
                transfer_syntax_uid=r.transfer_syntax_uid,
                object_key=r.object_key,
                size=r.size,
                sha256=bytes(r.sha256),
                metadata_json=r.metadata_json,
                layout=json.loads(r.layout_json),
                instance_number=r.instance_number,
                stored_form=r.stored_form,
            )
            for r in rows
        ]
