"""The geometry of each collection item's frames, from which the manifest's series flag is planned

A collection item keeps the geometry of its de-identified frames (``frames_json``): the manifest's
``geometry`` column of a series is planned from all of them when a version is finished. Items built
before have none (null): their series' flag is left unknown.

Revision ID: 0010
Revises: 0009
"""
import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # nullable and without a default: a plain ADD COLUMN on SQLite and PostgreSQL alike, no table copy
    op.add_column("collection_items", sa.Column("frames_json", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("collection_items") as batch:
        batch.drop_column("frames_json")
