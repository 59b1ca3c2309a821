"""Compact originals and storage tiers: the form each copy of an original is kept in, and where

An original verified (and replicated) may be kept in a compact form that reconstructs its bytes
exactly (dicomgw.originals); the row says which form each store holds, the codec and its size, and
whether the primary copy is in the hot store or the cold tier. A partition may set its own
lifecycle. Existing rows are verbatim and hot; existing partitions follow the deployment's settings.

Revision ID: 0008
Revises: 0007
"""
import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("stored_form", sa.String(16), nullable=False, server_default="verbatim"))
        batch.add_column(sa.Column("replica_form", sa.String(16), nullable=False,
                                   server_default="verbatim"))
        batch.add_column(sa.Column("codec", sa.String(16), nullable=True))
        batch.add_column(sa.Column("stored_size", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("compacted_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("tier", sa.String(8), nullable=False, server_default="hot"))
    with op.batch_alter_table("partitions") as batch:
        batch.add_column(sa.Column("compact_after_seconds", sa.Float(), nullable=True))
        batch.add_column(sa.Column("cold_after_seconds", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("partitions") as batch:
        for column in ("cold_after_seconds", "compact_after_seconds"):
            batch.drop_column(column)
    with op.batch_alter_table("instances") as batch:
        for column in ("tier", "compacted_at", "stored_size", "codec", "replica_form", "stored_form"):
            batch.drop_column(column)
