"""QIDO aggregates on study and series rows: counts, modalities and SOP classes, computed once per commit

A study search used to run three grouped queries over instances and series for every page (counts,
ModalitiesInStudy, SOPClassesInStudy), a series search one; the index commit now keeps them on the
rows. Existing rows are filled here from the instances and series they have.

Revision ID: 0007
Revises: 0006
"""
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


def downgrade() -> None:
    with op.batch_alter_table("series") as batch:
        batch.drop_column("num_instances")
    with op.batch_alter_table("studies") as batch:
        for column in ("sop_classes", "modalities", "num_instances", "num_series"):
            batch.drop_column(column)
