"""SQLAlchemy models of the index: studies, series, instances, and the outbox of background work.

Attributes QIDO matches on are columns with indexes (0003 adds those 0001 lacked); everything else an
instance carries is kept as pre-serialised DICOM JSON (``metadata_json``) so that WADO-RS metadata is
a join of strings.
Person names are kept three ways: as received (DICOM PN string), case-folded (for case-insensitive
matching) and as a space-delimited list of folded name components (for ``fuzzymatching``).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

UID = String(64)


class Base(DeclarativeBase):
    pass


class Study(Base):
    __tablename__ = "studies"

    study_instance_uid: Mapped[str] = mapped_column(UID, primary_key=True)
    study_date: Mapped[str | None] = mapped_column(String(8), index=True)
    study_time: Mapped[str | None] = mapped_column(String(16))
    accession_number: Mapped[str | None] = mapped_column(String(64), index=True)
    study_id: Mapped[str | None] = mapped_column(String(16), index=True)
    study_description: Mapped[str | None] = mapped_column(String(256), index=True)
    referring_physician_name: Mapped[str | None] = mapped_column(String(512), index=True)
    referring_physician_name_folded: Mapped[str | None] = mapped_column(String(512), index=True)
    patient_name: Mapped[str | None] = mapped_column(String(512), index=True)
    patient_name_folded: Mapped[str | None] = mapped_column(String(512), index=True)
    # " smith john j " : every component word, folded, space-delimited with a leading/trailing space
    patient_name_words: Mapped[str | None] = mapped_column(String(600))
    patient_id: Mapped[str | None] = mapped_column(String(64), index=True)
    patient_birth_date: Mapped[str | None] = mapped_column(String(8), index=True)
    patient_sex: Mapped[str | None] = mapped_column(String(16), index=True)
    # DICOM JSON members (no braces) of the study- and patient-level attributes of the first instance
    attributes_json: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), index=True
    )

    # the study list, newest first, and StudyDate/StudyTime matching
    __table_args__ = (Index("ix_studies_date_time", "study_date", "study_time"),)


class Series(Base):
    __tablename__ = "series"

    series_instance_uid: Mapped[str] = mapped_column(UID, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(
        UID, ForeignKey("studies.study_instance_uid", ondelete="CASCADE"), index=True
    )
    modality: Mapped[str | None] = mapped_column(String(16), index=True)
    series_number: Mapped[int | None] = mapped_column(Integer)
    series_description: Mapped[str | None] = mapped_column(String(256), index=True)
    series_date: Mapped[str | None] = mapped_column(String(8), index=True)
    series_time: Mapped[str | None] = mapped_column(String(16), index=True)
    body_part_examined: Mapped[str | None] = mapped_column(String(64), index=True)
    performed_procedure_step_start_date: Mapped[str | None] = mapped_column(
        String(8), index=True
    )
    performed_procedure_step_start_time: Mapped[str | None] = mapped_column(
        String(16), index=True
    )
    attributes_json: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    # the series of a study in SeriesNumber order (QIDO's series listing and SeriesNumber matching)
    __table_args__ = (Index("ix_series_study_number", "study_instance_uid", "series_number"),)


class Instance(Base):
    __tablename__ = "instances"

    sop_instance_uid: Mapped[str] = mapped_column(UID, primary_key=True)
    series_instance_uid: Mapped[str] = mapped_column(
        UID, ForeignKey("series.series_instance_uid", ondelete="CASCADE"), index=True
    )
    study_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    sop_class_uid: Mapped[str] = mapped_column(UID, index=True)
    instance_number: Mapped[int | None] = mapped_column(Integer)
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    content_date: Mapped[str | None] = mapped_column(String(8), index=True)
    content_time: Mapped[str | None] = mapped_column(String(16))
    rows: Mapped[int | None] = mapped_column(Integer)
    columns: Mapped[int | None] = mapped_column(Integer)
    number_of_frames: Mapped[int | None] = mapped_column(Integer)
    # the original object: where it is, how big, its SHA-256
    object_key: Mapped[str] = mapped_column(String(400))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[bytes] = mapped_column(LargeBinary(32))
    # pre-serialised DICOM JSON object of the whole instance; BulkDataURIs hold BULK_BASE
    metadata_json: Mapped[str] = mapped_column(Text)
    # JSON: {"pixel": {...image pixel module...}, "frames": [[[offset, length], ...], ...],
    #        "bulk": {"tag-path": [offset, length]}, "data_offset": int}
    layout_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), index=True
    )
    verified_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), index=True)
    # pending | verified | mismatch | missing | repaired | lost
    verify_status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    # none (no replica configured) | pending | replicated | mismatch | missing
    replica_status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    replicated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    repaired_count: Mapped[int] = mapped_column(Integer, default=0)

    __table_args__ = (
        Index("ix_instances_study_series", "study_instance_uid", "series_instance_uid"),
        # the instances of a series in InstanceNumber order (QIDO instance listing and matching);
        # Rows, Columns, NumberOfFrames and ContentTime are matched within a study or series scope
        # and stay unindexed to keep ingest into the largest table lean
        Index("ix_instances_series_number", "series_instance_uid", "instance_number"),
    )


class OutboxItem(Base):
    """Background work written in the same transaction as the rows it is about (DESIGN invariant 4)."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    task: Mapped[str] = mapped_column(String(32))
    key: Mapped[str] = mapped_column(String(400))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    available_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), index=True
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (UniqueConstraint("task", "key", name="uq_outbox_task_key"),)


class ApiKey(Base):
    """A machine credential. Only a keyed hash of the key is stored; the key itself is shown once.

    A revoked key keeps its row (and its name: audit events name keys, so a name is never reused).
    """

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    # HMAC-SHA256 of the whole key under the deployment's key secret
    key_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    # the first characters of the key, to recognise it in `dicomgw keys list`
    prefix: Mapped[str] = mapped_column(String(16))
    # space-delimited scopes (dicom.read dicom.write dicom.admin)
    scopes: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class AuditEventRow(Base):
    """One audit event (PS3.15 A.5): append-only, never updated; ``dicomgw audit`` reads it."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    event: Mapped[str] = mapped_column(String(32))
    action: Mapped[str] = mapped_column(String(1))
    outcome: Mapped[int] = mapped_column(Integer)
    who: Mapped[str] = mapped_column(String(256), index=True)
    who_kind: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(64))
    method: Mapped[str] = mapped_column(String(8))
    route: Mapped[str] = mapped_column(String(256))
    # " uid1 uid2 ": space-delimited with a leading and trailing space, for `--study` look-ups
    studies: Mapped[str] = mapped_column(Text)
    query: Mapped[str] = mapped_column(Text)
    detail: Mapped[str] = mapped_column(Text)
    count: Mapped[int] = mapped_column(Integer)
