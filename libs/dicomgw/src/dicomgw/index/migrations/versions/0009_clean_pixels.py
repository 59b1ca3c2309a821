"""Clean Pixel Data in research collections: what was redacted in each item, and versions held for review

A collection built with the clean-pixels option records, per item, the boxes redacted in each frame
(``pixels_json``); a version may hold its cleaned images for a data manager's review before they are
stored (``review``). Existing items were never cleaned; existing versions were not held.

Revision ID: 0009
Revises: 0008
"""
import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("collection_items") as batch:
        batch.add_column(sa.Column("pixels_json", sa.Text(), nullable=False, server_default=""))
    with op.batch_alter_table("collection_versions") as batch:
        batch.add_column(sa.Column("review", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("collection_versions") as batch:
        batch.drop_column("review")
    with op.batch_alter_table("collection_items") as batch:
        batch.drop_column("pixels_json")
