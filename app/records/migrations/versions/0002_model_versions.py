"""Model versions and which one is active, with when and by whom it was activated.

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
    op.create_table(
        "model_versions",
        sa.Column("version", sa.Text, primary_key=True),
        sa.Column("sha256", sa.Text, nullable=False),
        sa.Column("arch", sa.Text, nullable=False),
        sa.Column("test_accuracy", sa.Float),
        sa.Column("metadata", sa.JSON, nullable=False),
        sa.Column("kept_at", sa.Text, nullable=False),
    )
    # One row at most: the version every replica should serve.
    op.create_table(
        "active_model",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("version", sa.Text, sa.ForeignKey("model_versions.version"), nullable=False),
        sa.Column("activated_at", sa.Text, nullable=False),
        sa.Column("activated_by", sa.Text, nullable=False),
        sa.CheckConstraint("id = 1", name="one_active_model"),
    )


def downgrade() -> None:
    op.drop_table("active_model")
    op.drop_table("model_versions")
