"""Job records, as the first SQLite store held them.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("params", sa.JSON, nullable=False),
        sa.Column("progress", sa.JSON, nullable=False, server_default="{}"),
        sa.Column("created_at", sa.Text, nullable=False),
        sa.Column("started_at", sa.Text),
        sa.Column("finished_at", sa.Text),
        sa.Column("error", sa.Text),
        sa.Column("model_version", sa.Text),
        sa.Column("test_accuracy", sa.Float),
        sa.Column("owner", sa.Text, nullable=False),
        sa.Column("heartbeat", sa.Float, nullable=False),
        sa.Column("pid", sa.Integer),
        sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.create_index("jobs_created", "jobs", ["created_at"])


def downgrade() -> None:
    op.drop_table("jobs")
