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
    Boolean,
    DateTime,
    Float,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    PrimaryKeyConstraint,
    String,
    Text,
    UniqueConstraint,
    false,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

UID = String(64)
# a partition's name (`dicomgw.partitions.valid_name`); "default" is /dicom-web itself
PARTITION = String(63)


class Base(DeclarativeBase):
    pass


def _in_partition(name: str, *columns: str) -> Index:
    """An index whose look-ups are within one partition, as every search is.

    The partition comes last, in keys and indexes alike: it narrows almost nothing (most rows are in
    a few partitions), and SQLite's planner, without statistics, takes an equality on a leading column
    for a selective one and would prefer any partition-led index to the one that matches the query.
    """
    return Index(name, *columns, "partition_name")


class Partition(Base):
    """A separate archive behind one DICOMweb root: a hospital's data, or a research collection."""

    __tablename__ = "partitions"

    name: Mapped[str] = mapped_column(PARTITION, primary_key=True)
    # "archive" (stored into by STOW-RS and DIMSE) or "collection" (written by the collection builder)
    kind: Mapped[str] = mapped_column(String(16), default="archive")
    # a read-only partition refuses STOW-RS (405); its content is derived data
    read_only: Mapped[bool] = mapped_column(Boolean, default=False)
    description: Mapped[str] = mapped_column(String(256), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # storage lifecycle of this partition's originals (seconds after ingest; NULL: the deployment's
    # DICOMGW_COMPACT_AFTER_SECONDS / DICOMGW_COLD_AFTER_SECONDS; negative: never)
    compact_after_seconds: Mapped[float | None] = mapped_column(Float)
    cold_after_seconds: Mapped[float | None] = mapped_column(Float)


class Study(Base):
    __tablename__ = "studies"

    # every row is in exactly one partition; the same UIDs may exist in two partitions
    partition_name: Mapped[str] = mapped_column(PARTITION, default="default")
    study_instance_uid: Mapped[str] = mapped_column(UID)
    study_date: Mapped[str | None] = mapped_column(String(8))
    study_time: Mapped[str | None] = mapped_column(String(16))
    accession_number: Mapped[str | None] = mapped_column(String(64))
    study_id: Mapped[str | None] = mapped_column(String(16))
    study_description: Mapped[str | None] = mapped_column(String(256))
    referring_physician_name: Mapped[str | None] = mapped_column(String(512))
    referring_physician_name_folded: Mapped[str | None] = mapped_column(String(512))
    patient_name: Mapped[str | None] = mapped_column(String(512))
    patient_name_folded: Mapped[str | None] = mapped_column(String(512))
    # " smith john j " : every component word, folded, space-delimited with a leading/trailing space
    patient_name_words: Mapped[str | None] = mapped_column(String(600))
    patient_id: Mapped[str | None] = mapped_column(String(64))
    patient_birth_date: Mapped[str | None] = mapped_column(String(8))
    patient_sex: Mapped[str | None] = mapped_column(String(16))
    # DICOM JSON members (no braces) of the study- and patient-level attributes of the first instance
    attributes_json: Mapped[str] = mapped_column(Text, default="")
    # what QIDO-RS computes for a study (NumberOfStudyRelatedSeries/Instances, ModalitiesInStudy,
    # SOPClassesInStudy: sorted, backslash-separated), kept up to date by every index commit
    num_series: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    num_instances: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    modalities: Mapped[str] = mapped_column(Text, default="", server_default="")
    sop_classes: Mapped[str] = mapped_column(Text, default="", server_default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), index=True
    )

    __table_args__ = (
        PrimaryKeyConstraint("study_instance_uid", "partition_name"),
        # the study list, newest first, and StudyDate/StudyTime matching
        _in_partition("ix_studies_date_time", "study_date", "study_time"),
        *(_in_partition(f"ix_studies_{c}", c) for c in (
            "accession_number", "study_id", "study_description",
            "referring_physician_name", "referring_physician_name_folded", "patient_name",
            "patient_name_folded", "patient_id", "patient_birth_date", "patient_sex")),
    )


class Series(Base):
    __tablename__ = "series"

    partition_name: Mapped[str] = mapped_column(PARTITION, default="default")
    series_instance_uid: Mapped[str] = mapped_column(UID)
    study_instance_uid: Mapped[str] = mapped_column(UID)
    modality: Mapped[str | None] = mapped_column(String(16))
    series_number: Mapped[int | None] = mapped_column(Integer)
    series_description: Mapped[str | None] = mapped_column(String(256))
    series_date: Mapped[str | None] = mapped_column(String(8))
    series_time: Mapped[str | None] = mapped_column(String(16))
    body_part_examined: Mapped[str | None] = mapped_column(String(64))
    performed_procedure_step_start_date: Mapped[str | None] = mapped_column(String(8))
    performed_procedure_step_start_time: Mapped[str | None] = mapped_column(String(16))
    attributes_json: Mapped[str] = mapped_column(Text, default="")
    # NumberOfSeriesRelatedInstances, kept up to date by every index commit
    num_instances: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        PrimaryKeyConstraint("series_instance_uid", "partition_name"),
        # the series of a study in SeriesNumber order (QIDO's series listing and SeriesNumber matching)
        _in_partition("ix_series_study_number", "study_instance_uid", "series_number"),
        *(_in_partition(f"ix_series_{c}", c) for c in (
            "modality", "series_description", "series_date", "series_time",
            "body_part_examined", "performed_procedure_step_start_date",
            "performed_procedure_step_start_time")),
        ForeignKeyConstraint(["study_instance_uid", "partition_name"],
                             ["studies.study_instance_uid", "studies.partition_name"],
                             name="fk_series_study", ondelete="CASCADE"),
    )


class Instance(Base):
    __tablename__ = "instances"

    partition_name: Mapped[str] = mapped_column(PARTITION, default="default")
    sop_instance_uid: Mapped[str] = mapped_column(UID)
    series_instance_uid: Mapped[str] = mapped_column(UID)
    study_instance_uid: Mapped[str] = mapped_column(UID)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    instance_number: Mapped[int | None] = mapped_column(Integer)
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    content_date: Mapped[str | None] = mapped_column(String(8))
    content_time: Mapped[str | None] = mapped_column(String(16))
    rows: Mapped[int | None] = mapped_column(Integer)
    columns: Mapped[int | None] = mapped_column(Integer)
    number_of_frames: Mapped[int | None] = mapped_column(Integer)
    # the original object: where it is, how big, its SHA-256
    object_key: Mapped[str] = mapped_column(String(400))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[bytes] = mapped_column(LargeBinary(32))
    # pre-serialised DICOM JSON object of the whole instance; BulkDataURIs hold BULK_BASE
    # the instance-level attributes QIDO-RS returns by default (dicomgw.dicom.levels), DICOM JSON
    # members without braces; "" for a row indexed before migration 0007 filled it
    qido_json: Mapped[str] = mapped_column(Text, default="", server_default="")
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
    # the form each copy is kept in (dicomgw.originals): verbatim (the bytes received, at object_key)
    # or compact (a lossless form that reconstructs them byte for byte, at object_key + ".dgwc")
    stored_form: Mapped[str] = mapped_column(String(16), default="verbatim", server_default="verbatim")
    replica_form: Mapped[str] = mapped_column(String(16), default="verbatim", server_default="verbatim")
    # the compact form's codec (jpegls, zstd...) and size in bytes; NULL while verbatim
    codec: Mapped[str | None] = mapped_column(String(16))
    stored_size: Mapped[int | None] = mapped_column(BigInteger)
    compacted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # where the primary copy is: "hot" (the primary store) or "cold" (the cold tier's store)
    tier: Mapped[str] = mapped_column(String(8), default="hot", server_default="hot")

    __table_args__ = (
        PrimaryKeyConstraint("sop_instance_uid", "partition_name"),
        _in_partition("ix_instances_study_series", "study_instance_uid", "series_instance_uid"),
        *(_in_partition(f"ix_instances_{c}", c) for c in ("sop_class_uid", "content_date")),
        # the instances of a series in InstanceNumber order (QIDO instance listing and matching);
        # Rows, Columns, NumberOfFrames and ContentTime are matched within a study or series scope
        # and stay unindexed to keep ingest into the largest table lean
        _in_partition("ix_instances_series_number", "series_instance_uid", "instance_number"),
        ForeignKeyConstraint(["series_instance_uid", "partition_name"],
                             ["series.series_instance_uid", "series.partition_name"],
                             name="fk_instances_series", ondelete="CASCADE"),
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


class Collection(Base):
    """A research collection: a query over a source partition, de-identified into its own partition.

    Its definition (source, query, profile) is fixed at creation; running it again makes a new version
    that adds what is new. The pseudonym key is the collection's own secret: the same patient, study
    or UID maps to the same pseudonym in every version, and to nothing without the key.
    """

    __tablename__ = "collections"

    name: Mapped[str] = mapped_column(PARTITION, primary_key=True)
    source: Mapped[str] = mapped_column(PARTITION)
    query: Mapped[str] = mapped_column(Text, default="")
    # comma-delimited profile and options ("basic,retain-longitudinal")
    profile: Mapped[str] = mapped_column(String(256))
    nifti: Mapped[bool] = mapped_column(Boolean, default=False)
    # the HMAC key of the pseudonyms (32 random bytes); never leaves the archive
    secret: Mapped[bytes] = mapped_column(LargeBinary(32))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class CollectionVersion(Base):
    __tablename__ = "collection_versions"

    collection: Mapped[str] = mapped_column(PARTITION, primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    # planning | building | review | complete | failed
    state: Mapped[str] = mapped_column(String(16), default="building")
    detail: Mapped[str] = mapped_column(Text, default="")
    # cleaned images (burned-in text redacted) wait for a data manager's review before they are stored
    review: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # counts of the version's own new items, once complete
    instances: Mapped[int] = mapped_column(Integer, default=0)
    excluded: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class CollectionItem(Base):
    """One source instance of a collection: its de-identified copy, or why it was left out.

    Also the lineage of the collection (admin only): which original (by SHA-256) each shared object
    came from. An item belongs to the version that first included it, and is never changed after it
    is done, so an earlier version's content stays what it was.
    """

    __tablename__ = "collection_items"

    collection: Mapped[str] = mapped_column(PARTITION, primary_key=True)
    source_sop_instance_uid: Mapped[str] = mapped_column(UID, primary_key=True)
    version: Mapped[int] = mapped_column(Integer, index=True)
    source_study_instance_uid: Mapped[str] = mapped_column(UID)
    source_series_instance_uid: Mapped[str] = mapped_column(UID)
    original_sha256: Mapped[bytes] = mapped_column(LargeBinary(32))
    # pending | review (cleaned, held for review) | approved (to be stored) | done | excluded
    state: Mapped[str] = mapped_column(String(16), default="pending")
    reason: Mapped[str] = mapped_column(String(256), default="")
    study_instance_uid: Mapped[str | None] = mapped_column(UID)
    series_instance_uid: Mapped[str | None] = mapped_column(UID)
    sop_instance_uid: Mapped[str | None] = mapped_column(UID)
    sha256: Mapped[bytes | None] = mapped_column(LargeBinary(32))
    # the manifest row (JSON) of the de-identified instance
    row_json: Mapped[str] = mapped_column(Text, default="")
    # what Clean Pixel Data did (JSON: status, boxes per frame, whole frames, passes, rules version);
    # empty when the pixels were not looked at
    pixels_json: Mapped[str] = mapped_column(Text, default="", server_default="")
    # the geometry of the de-identified instance's frames (JSON: per frame, the fields of
    # dicomgw_client.volume.Frame), from which the manifest's series flag is planned; null for items
    # built before it was kept (their series' flag is unknown)
    frames_json: Mapped[str | None] = mapped_column(Text, nullable=True)

    __table_args__ = (Index("ix_collection_items_state", "collection", "state"),)
