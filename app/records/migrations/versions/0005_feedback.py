"""Users' corrections (POST /feedback): each one's image as the model saw it, its label, whether it
may be trained on, and which split it falls in.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "feedback",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("label", sa.Integer, nullable=False),
        sa.Column("split", sa.Text, nullable=False),
        sa.Column("image", sa.LargeBinary, nullable=False),
        sa.Column("prediction_id", sa.Text),
        sa.Column("predicted", sa.Integer),
        sa.Column("model_version", sa.Text),
        sa.Column("client", sa.Text, nullable=False),
        sa.Column("trusted", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.Text, nullable=False),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("reviewed_at", sa.Text),
    )
    op.create_index("feedback_by_status", "feedback", ["status", "created_at"])
    op.create_index("feedback_by_client", "feedback", ["client", "created"])


def downgrade() -> None:
    op.drop_index("feedback_by_client", "feedback")
    op.drop_index("feedback_by_status", "feedback")
    op.drop_table("feedback")
