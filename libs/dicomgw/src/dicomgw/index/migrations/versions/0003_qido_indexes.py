"""indexes for every QIDO-RS matching key of studies and series, and for instance ordering

Revision ID: 0003
Revises: 0002
"""
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# (index name, table, columns)
INDEXES = [
    ("ix_studies_date_time", "studies", ["study_date", "study_time"]),
    ("ix_studies_study_id", "studies", ["study_id"]),
    ("ix_studies_study_description", "studies", ["study_description"]),
    ("ix_studies_referring_physician_name", "studies", ["referring_physician_name"]),
    ("ix_studies_referring_physician_name_folded", "studies", ["referring_physician_name_folded"]),
    ("ix_studies_patient_name", "studies", ["patient_name"]),
    ("ix_studies_patient_birth_date", "studies", ["patient_birth_date"]),
    ("ix_studies_patient_sex", "studies", ["patient_sex"]),
    ("ix_series_series_description", "series", ["series_description"]),
    ("ix_series_series_date", "series", ["series_date"]),
    ("ix_series_series_time", "series", ["series_time"]),
    ("ix_series_body_part_examined", "series", ["body_part_examined"]),
    ("ix_series_performed_procedure_step_start_date", "series",
     ["performed_procedure_step_start_date"]),
    ("ix_series_performed_procedure_step_start_time", "series",
     ["performed_procedure_step_start_time"]),
    ("ix_series_study_number", "series", ["study_instance_uid", "series_number"]),
    ("ix_instances_content_date", "instances", ["content_date"]),
    ("ix_instances_series_number", "instances", ["series_instance_uid", "instance_number"]),
]


def upgrade() -> None:
    for name, table, columns in INDEXES:
        op.create_index(name, table, columns, unique=False)


def downgrade() -> None:
    for name, table, _ in reversed(INDEXES):
        op.drop_index(name, table_name=table)
