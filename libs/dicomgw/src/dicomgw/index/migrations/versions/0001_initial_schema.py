"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-24 09:18:59.442877
"""
from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    
    op.create_table('outbox',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('task', sa.String(length=32), nullable=False),
    sa.Column('key', sa.String(length=400), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('available_at', sa.DateTime(timezone=True), server_default=sa.text('(CURRENT_TIMESTAMP)'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('(CURRENT_TIMESTAMP)'), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('task', 'key', name='uq_outbox_task_key')
    )
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_outbox_available_at'), ['available_at'], unique=False)

    op.create_table('studies',
    sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('study_date', sa.String(length=8), nullable=True),
    sa.Column('study_time', sa.String(length=16), nullable=True),
    sa.Column('accession_number', sa.String(length=64), nullable=True),
    sa.Column('study_id', sa.String(length=16), nullable=True),
    sa.Column('study_description', sa.String(length=256), nullable=True),
    sa.Column('referring_physician_name', sa.String(length=512), nullable=True),
    sa.Column('referring_physician_name_folded', sa.String(length=512), nullable=True),
    sa.Column('patient_name', sa.String(length=512), nullable=True),
    sa.Column('patient_name_folded', sa.String(length=512), nullable=True),
    sa.Column('patient_name_words', sa.String(length=600), nullable=True),
    sa.Column('patient_id', sa.String(length=64), nullable=True),
    sa.Column('patient_birth_date', sa.String(length=8), nullable=True),
    sa.Column('patient_sex', sa.String(length=16), nullable=True),
    sa.Column('attributes_json', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('(CURRENT_TIMESTAMP)'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('(CURRENT_TIMESTAMP)'), nullable=False),
    sa.PrimaryKeyConstraint('study_instance_uid')
    )
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_studies_accession_number'), ['accession_number'], unique=False)
        batch_op.create_index(batch_op.f('ix_studies_patient_id'), ['patient_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_studies_patient_name_folded'), ['patient_name_folded'], unique=False)
        batch_op.create_index(batch_op.f('ix_studies_study_date'), ['study_date'], unique=False)
        batch_op.create_index(batch_op.f('ix_studies_updated_at'), ['updated_at'], unique=False)

    op.create_table('series',
    sa.Column('series_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('modality', sa.String(length=16), nullable=True),
    sa.Column('series_number', sa.Integer(), nullable=True),
    sa.Column('series_description', sa.String(length=256), nullable=True),
    sa.Column('series_date', sa.String(length=8), nullable=True),
    sa.Column('series_time', sa.String(length=16), nullable=True),
    sa.Column('body_part_examined', sa.String(length=64), nullable=True),
    sa.Column('performed_procedure_step_start_date', sa.String(length=8), nullable=True),
    sa.Column('performed_procedure_step_start_time', sa.String(length=16), nullable=True),
    sa.Column('attributes_json', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('(CURRENT_TIMESTAMP)'), nullable=False),
    sa.ForeignKeyConstraint(['study_instance_uid'], ['studies.study_instance_uid'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('series_instance_uid')
    )
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_series_modality'), ['modality'], unique=False)
        batch_op.create_index(batch_op.f('ix_series_study_instance_uid'), ['study_instance_uid'], unique=False)

    op.create_table('instances',
    sa.Column('sop_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('series_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('sop_class_uid', sa.String(length=64), nullable=False),
    sa.Column('instance_number', sa.Integer(), nullable=True),
    sa.Column('transfer_syntax_uid', sa.String(length=64), nullable=False),
    sa.Column('content_date', sa.String(length=8), nullable=True),
    sa.Column('content_time', sa.String(length=16), nullable=True),
    sa.Column('rows', sa.Integer(), nullable=True),
    sa.Column('columns', sa.Integer(), nullable=True),
    sa.Column('number_of_frames', sa.Integer(), nullable=True),
    sa.Column('object_key', sa.String(length=400), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('sha256', sa.LargeBinary(length=32), nullable=False),
    sa.Column('metadata_json', sa.Text(), nullable=False),
    sa.Column('layout_json', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('(CURRENT_TIMESTAMP)'), nullable=False),
    sa.Column('verified_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('verify_status', sa.String(length=16), nullable=False),
    sa.ForeignKeyConstraint(['series_instance_uid'], ['series.series_instance_uid'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('sop_instance_uid')
    )
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_instances_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_instances_series_instance_uid'), ['series_instance_uid'], unique=False)
        batch_op.create_index(batch_op.f('ix_instances_sop_class_uid'), ['sop_class_uid'], unique=False)
        batch_op.create_index(batch_op.f('ix_instances_study_instance_uid'), ['study_instance_uid'], unique=False)
        batch_op.create_index('ix_instances_study_series', ['study_instance_uid', 'series_instance_uid'], unique=False)
        batch_op.create_index(batch_op.f('ix_instances_verified_at'), ['verified_at'], unique=False)




def downgrade() -> None:
    
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_instances_verified_at'))
        batch_op.drop_index('ix_instances_study_series')
        batch_op.drop_index(batch_op.f('ix_instances_study_instance_uid'))
        batch_op.drop_index(batch_op.f('ix_instances_sop_class_uid'))
        batch_op.drop_index(batch_op.f('ix_instances_series_instance_uid'))
        batch_op.drop_index(batch_op.f('ix_instances_created_at'))

    op.drop_table('instances')
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_series_study_instance_uid'))
        batch_op.drop_index(batch_op.f('ix_series_modality'))

    op.drop_table('series')
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_studies_updated_at'))
        batch_op.drop_index(batch_op.f('ix_studies_study_date'))
        batch_op.drop_index(batch_op.f('ix_studies_patient_name_folded'))
        batch_op.drop_index(batch_op.f('ix_studies_patient_id'))
        batch_op.drop_index(batch_op.f('ix_studies_accession_number'))

    op.drop_table('studies')
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_outbox_available_at'))

    op.drop_table('outbox')

