"""replication and verification state of every original

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("replica_status", sa.String(16), nullable=False,
                                   server_default="pending"))
        batch.add_column(sa.Column("replicated_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("repaired_count", sa.Integer(), nullable=False,
                                   server_default="0"))
        batch.create_index("ix_instances_replica_status", ["replica_status"])
        batch.create_index("ix_instances_verify_status", ["verify_status"])


def downgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.drop_index("ix_instances_verify_status")
        batch.drop_index("ix_instances_replica_status")
        batch.drop_column("repaired_count")
        batch.drop_column("replicated_at")
        batch.drop_column("replica_status")
