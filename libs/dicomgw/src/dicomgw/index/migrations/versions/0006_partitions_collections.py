"""partitions (every study, series and instance in exactly one) and research collections

The UIDs stop being keys on their own: studies, series and instances are keyed by (UID, partition), so
the same SOP Instance UID may be stored in two partitions. Every row already indexed lands in the
partition "default", which is what /dicom-web has always served.

Revision ID: 0006
Revises: 0005
"""
import warnings

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

PARTITION = sa.String(63)
UID = sa.String(64)
# how 0001 named the constraints, without naming them: PostgreSQL's defaults; SQLite's unnamed ones
# are found by the batch rebuild through this convention
CONVENTION = {"fk": "fk_%(table_name)s_%(column_0_name)s", "pk": "pk_%(table_name)s"}


def _partition_column() -> sa.Column:
    return sa.Column("partition_name", PARTITION, nullable=False, server_default="default")


# every search and look-up is within one partition: these indexes end with it (the partition narrows
# almost nothing; led by it, an index would look selective to SQLite's planner for every query)
IN_PARTITION = {
    "studies": [("ix_studies_date_time", ["study_date", "study_time"]),
                *((f"ix_studies_{c}", [c]) for c in (
                    "accession_number", "study_id", "study_description", "referring_physician_name",
                    "referring_physician_name_folded", "patient_name", "patient_name_folded",
                    "patient_id", "patient_birth_date", "patient_sex"))],
    "series": [("ix_series_study_number", ["study_instance_uid", "series_number"]),
               *((f"ix_series_{c}", [c]) for c in (
                   "modality", "series_description", "series_date", "series_time",
                   "body_part_examined", "performed_procedure_step_start_date",
                   "performed_procedure_step_start_time"))],
    "instances": [("ix_instances_study_series", ["study_instance_uid", "series_instance_uid"]),
                  ("ix_instances_series_number", ["series_instance_uid", "instance_number"]),
                  ("ix_instances_sop_class_uid", ["sop_class_uid"]),
                  ("ix_instances_content_date", ["content_date"])],
}
# indexes made redundant by the ones above (each was a prefix of another)
REDUNDANT = {"studies": ["ix_studies_study_date"], "series": ["ix_series_study_instance_uid"],
             "instances": ["ix_instances_series_instance_uid", "ix_instances_study_instance_uid"]}


def upgrade() -> None:
    op.create_table(
        "partitions",
        sa.Column("name", PARTITION, primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False, server_default="archive"),
        sa.Column("read_only", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("description", sa.String(256), nullable=False, server_default=""),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    )
    op.execute("INSERT INTO partitions (name, kind, description) "
               "VALUES ('default', 'archive', 'the archive at the DICOMweb root')")

    if op.get_bind().dialect.name == "postgresql":
        op.drop_constraint("instances_series_instance_uid_fkey", "instances", type_="foreignkey")
        op.drop_constraint("series_study_instance_uid_fkey", "series", type_="foreignkey")
        for table, uid in (("studies", "study_instance_uid"), ("series", "series_instance_uid"),
                           ("instances", "sop_instance_uid")):
            op.add_column(table, _partition_column())
            op.drop_constraint(f"{table}_pkey", table, type_="primary")
            op.create_primary_key(f"{table}_pkey", table, [uid, "partition_name"])
        op.create_foreign_key("fk_series_study", "series", "studies",
                              ["study_instance_uid", "partition_name"],
                              ["study_instance_uid", "partition_name"], ondelete="CASCADE")
        op.create_foreign_key("fk_instances_series", "instances", "series",
                              ["series_instance_uid", "partition_name"],
                              ["series_instance_uid", "partition_name"], ondelete="CASCADE")
    else:
        # SQLite changes keys by rebuilding each table (the migration runs with foreign keys off);
        # SQLAlchemy warns that the rebuilt table's key differs from the reflected one: that is the point
        warnings.filterwarnings("ignore", message=".*specifies columns .* as primary_key=True")
        with op.batch_alter_table("studies", recreate="always", naming_convention=CONVENTION) as b:
            b.add_column(_partition_column())
            b.create_primary_key("pk_studies", ["study_instance_uid", "partition_name"])
        with op.batch_alter_table("series", recreate="always", naming_convention=CONVENTION) as b:
            b.add_column(_partition_column())
            b.drop_constraint("fk_series_study_instance_uid", type_="foreignkey")
            b.create_primary_key("pk_series", ["series_instance_uid", "partition_name"])
            b.create_foreign_key("fk_series_study", "studies", ["study_instance_uid", "partition_name"],
                                 ["study_instance_uid", "partition_name"], ondelete="CASCADE")
        with op.batch_alter_table("instances", recreate="always", naming_convention=CONVENTION) as b:
            b.add_column(_partition_column())
            b.drop_constraint("fk_instances_series_instance_uid", type_="foreignkey")
            b.create_primary_key("pk_instances", ["sop_instance_uid", "partition_name"])
            b.create_foreign_key("fk_instances_series", "series",
                                 ["series_instance_uid", "partition_name"],
                                 ["series_instance_uid", "partition_name"], ondelete="CASCADE")

    for table, indexes in IN_PARTITION.items():
        for name in REDUNDANT[table]:
            op.drop_index(name, table_name=table)
        for name, columns in indexes:
            op.drop_index(name, table_name=table)
            op.create_index(name, table, [*columns, "partition_name"])

    op.create_table(
        "collections",
        sa.Column("name", PARTITION, primary_key=True),
        sa.Column("source", PARTITION, nullable=False),
        sa.Column("query", sa.Text(), nullable=False),
        sa.Column("profile", sa.String(256), nullable=False),
        sa.Column("nifti", sa.Boolean(), nullable=False),
        sa.Column("secret", sa.LargeBinary(32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    )
    op.create_table(
        "collection_versions",
        sa.Column("collection", PARTITION, primary_key=True),
        sa.Column("version", sa.Integer(), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("instances", sa.Integer(), nullable=False),
        sa.Column("excluded", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_table(
        "collection_items",
        sa.Column("collection", PARTITION, primary_key=True),
        sa.Column("source_sop_instance_uid", UID, primary_key=True),
        sa.Column("version", sa.Integer(), nullable=False, index=True),
        sa.Column("source_study_instance_uid", UID, nullable=False),
        sa.Column("source_series_instance_uid", UID, nullable=False),
        sa.Column("original_sha256", sa.LargeBinary(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(256), nullable=False),
        sa.Column("study_instance_uid", UID, nullable=True),
        sa.Column("series_instance_uid", UID, nullable=True),
        sa.Column("sop_instance_uid", UID, nullable=True),
        sa.Column("sha256", sa.LargeBinary(32), nullable=True),
        sa.Column("row_json", sa.Text(), nullable=False),
    )
    op.create_index("ix_collection_items_state", "collection_items", ["collection", "state"])


def downgrade() -> None:
    raise NotImplementedError("0006 is not reversible: partitions may hold the same UIDs twice")
