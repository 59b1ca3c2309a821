"""QIDO aggregates on study and series rows, and each instance's QIDO attributes on its row

A study search used to run three grouped queries over instances and series for every page (counts,
ModalitiesInStudy, SOPClassesInStudy), a series search one; the index commit now keeps them on the
rows. An instance search decoded every instance's whole metadata for a dozen attributes; those are
now kept on the instance row (qido_json). Existing rows are filled here.

Revision ID: 0007
Revises: 0006
"""
import json
from collections import defaultdict

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("studies") as batch:
        batch.add_column(sa.Column("num_series", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("num_instances", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("modalities", sa.Text(), nullable=False, server_default=""))
        batch.add_column(sa.Column("sop_classes", sa.Text(), nullable=False, server_default=""))
    with op.batch_alter_table("series") as batch:
        batch.add_column(sa.Column("num_instances", sa.Integer(), nullable=False, server_default="0"))
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("qido_json", sa.Text(), nullable=False, server_default=""))
    op.execute(
        "UPDATE studies SET "
        "num_series = (SELECT count(DISTINCT i.series_instance_uid) FROM instances i "
        "  WHERE i.partition_name = studies.partition_name "
        "  AND i.study_instance_uid = studies.study_instance_uid), "
        "num_instances = (SELECT count(*) FROM instances i "
        "  WHERE i.partition_name = studies.partition_name "
        "  AND i.study_instance_uid = studies.study_instance_uid)")
    op.execute(
        "UPDATE series SET num_instances = (SELECT count(*) FROM instances i "
        "  WHERE i.partition_name = series.partition_name "
        "  AND i.series_instance_uid = series.series_instance_uid)")
    bind = op.get_bind()
    values: dict[tuple[str, str], dict[str, set[str]]] = defaultdict(lambda: {"m": set(), "c": set()})
    for partition, study, modality in bind.execute(sa.text(
            "SELECT DISTINCT partition_name, study_instance_uid, modality FROM series "
            "WHERE modality IS NOT NULL")):
        values[(partition, study)]["m"].add(modality)
    for partition, study, sop_class in bind.execute(sa.text(
            "SELECT DISTINCT partition_name, study_instance_uid, sop_class_uid FROM instances")):
        values[(partition, study)]["c"].add(sop_class)
    rows = [{"p": p, "u": u, "m": "\\".join(sorted(v["m"])), "c": "\\".join(sorted(v["c"]))}
            for (p, u), v in values.items()]
    if rows:
        bind.execute(sa.text("UPDATE studies SET modalities = :m, sop_classes = :c "
                             "WHERE partition_name = :p AND study_instance_uid = :u"), rows)
    _fill_qido_json(bind)


# SpecificCharacterSet, SOPClassUID, SOPInstanceUID, TimezoneOffsetFromUTC, InstanceNumber, Rows,
# Columns, BitsAllocated, NumberOfFrames, ContentDate, ContentTime (as dicomgw.dicom.levels had them
# when this migration was written)
_QIDO_TAGS = ("00080005", "00080016", "00080018", "00080201", "00200013", "00280010", "00280011",
              "00280100", "00280008", "00080023", "00080033")


def _fill_qido_json(bind: sa.Connection, batch: int = 2000) -> None:
    """Each instance's QIDO attributes, picked from its metadata, a batch of rows at a time."""
    last: tuple[str, str] = ("", "")
    while True:
        found = bind.execute(sa.text(
            "SELECT partition_name, sop_instance_uid, metadata_json FROM instances "
            "WHERE (partition_name, sop_instance_uid) > (:p, :u) "
            "ORDER BY partition_name, sop_instance_uid LIMIT :n"),
            {"p": last[0], "u": last[1], "n": batch}).all()
        if not found:
            return
        updates = []
        for partition, uid, metadata in found:
            members = json.loads(metadata or "{}")
            picked = ",".join(f"{json.dumps(tag)}:{json.dumps(members[tag], separators=(',', ':'))}"
                              for tag in sorted(_QIDO_TAGS) if tag in members)
            updates.append({"p": partition, "u": uid, "q": picked})
        bind.execute(sa.text("UPDATE instances SET qido_json = :q "
                             "WHERE partition_name = :p AND sop_instance_uid = :u"), updates)
        last = (found[-1][0], found[-1][1])


def downgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("qido_json")
    with op.batch_alter_table("series") as batch:
        batch.drop_column("num_instances")
    with op.batch_alter_table("studies") as batch:
        for column in ("sop_classes", "modalities", "num_instances", "num_series"):
            batch.drop_column(column)
