"""Trainers and job claiming: the trainer processes that are alive and their slots, and which
trainer runs each job.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # One row per trainer name (a host, or MNIST_TRAINER_NAME); its processes keep `heartbeat` fresh.
    op.create_table(
        "trainers",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("slots", sa.Integer, nullable=False),
        sa.Column("heartbeat", sa.Float, nullable=False),
        sa.Column("started_at", sa.Text, nullable=False),
    )
    with op.batch_alter_table("jobs") as jobs:  # batch: SQLite cannot alter a table in place
        jobs.add_column(sa.Column("trainer", sa.Text))
    op.create_index("jobs_by_status", "jobs", ["status", "created_at"])


def downgrade() -> None:
    op.drop_index("jobs_by_status", "jobs")
    with op.batch_alter_table("jobs") as jobs:
        jobs.drop_column("trainer")
    op.drop_table("trainers")
