"""How each finished job's model was judged against the active one (app/jobs/promotion.py).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as jobs:  # batch: SQLite cannot alter a table in place
        jobs.add_column(sa.Column("promotion", sa.JSON))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as jobs:
        jobs.drop_column("promotion")
