"""Every table of the records database, exactly as the migrations (app/records/migrations/versions)
leave it: the one definition the code reads and writes through.

A schema change is a new Alembic revision plus the same change here; tests/unit/test_schema.py
migrates an empty database of each kind and fails where the two disagree.
"""

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
    false,
)

metadata = MetaData()

jobs = Table(
    "jobs",
    metadata,
    Column("id", Text, primary_key=True),
    Column("status", Text, nullable=False),
    Column("params", JSON, nullable=False),
    Column("progress", JSON, nullable=False, server_default="{}"),
    Column("created_at", Text, nullable=False),
    Column("started_at", Text),
    Column("finished_at", Text),
    Column("error", Text),
    Column("model_version", Text),
    Column("test_accuracy", Float),
    Column("owner", Text, nullable=False),
    Column("heartbeat", Float, nullable=False),
    Column("pid", Integer),
    Column("cancel_requested", Boolean, nullable=False, server_default=false()),
    Column("trainer", Text),  # which trainer runs it (0003)
    Column("promotion", JSON),  # how its model was judged against the active one (0004)
    Index("jobs_created", "created_at"),
    Index("jobs_by_status", "status", "created_at"),
)

# One row per trainer name (a host, or MNIST_TRAINER_NAME); its processes keep `heartbeat` fresh.
trainers = Table(
    "trainers",
    metadata,
    Column("name", Text, primary_key=True),
    Column("slots", Integer, nullable=False),
    Column("heartbeat", Float, nullable=False),
    Column("started_at", Text, nullable=False),
)

model_versions = Table(
    "model_versions",
    metadata,
    Column("version", Text, primary_key=True),
    Column("sha256", Text, nullable=False),
    Column("arch", Text, nullable=False),
    Column("test_accuracy", Float),
    Column("metadata", JSON, nullable=False),
    Column("kept_at", Text, nullable=False),
)

# One row at most: the version every replica should serve.
active_model = Table(
    "active_model",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("version", Text, ForeignKey("model_versions.version"), nullable=False),
    Column("activated_at", Text, nullable=False),
    Column("activated_by", Text, nullable=False),
    CheckConstraint("id = 1", name="one_active_model"),
)

# Users' corrections (0005). `image`: the input the model saw, uint8 grey levels; `client`: a hash of
# the sender's address and `created`: the database's clock, for the rate limit; `trusted`: sent with
# the token.
feedback = Table(
    "feedback",
    metadata,
    Column("id", Text, primary_key=True),
    Column("status", Text, nullable=False),
    Column("label", Integer, nullable=False),
    Column("split", Text, nullable=False),
    Column("image", LargeBinary, nullable=False),
    Column("prediction_id", Text),
    Column("predicted", Integer),
    Column("model_version", Text),
    Column("client", Text, nullable=False),
    Column("trusted", Boolean, nullable=False),
    Column("created_at", Text, nullable=False),
    Column("created", Float, nullable=False),
    Column("reviewed_at", Text),
    Index("feedback_by_status", "status", "created_at"),
    Index("feedback_by_client", "client", "created"),
)
