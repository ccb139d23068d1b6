"""Alembic's entry point: runs the revisions on the connection `Database.migrate` passes in, inside
its (already serialised) transaction. `alembic check` compares the migrated database with the tables
the code uses (app/records/tables.py), types and server defaults included."""

import re
from typing import Any

from alembic import context
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column

from app.records.tables import metadata


def plain_default(default: str | None) -> str | None:
    """A server default's value without the brackets, quotes or PostgreSQL cast around it."""
    if default is None:
        return None
    default = re.sub(r"::[\w ]+$", "", default)  # PostgreSQL: '{}'::json
    default = re.sub(r"^\((.*)\)$", r"\1", default)  # SQLite may bracket an expression
    return re.sub(r"^'(.*)'$", r"\1", default)


def server_default_differs(
    migration: MigrationContext,
    inspected_column: Column[Any],
    metadata_column: Column[Any],
    inspected_default: str | None,
    metadata_default: Any,
    rendered_metadata_default: str | None,
) -> bool:
    """Defaults compared as text, each rendered by the database's own dialect. PostgreSQL's built-in
    comparison asks the server whether `'{}'::json = '{}'`, which json has no operator to answer."""
    return plain_default(inspected_default) != plain_default(rendered_metadata_default)


connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    compare_type=True,
    compare_server_default=server_default_differs,
)
with context.begin_transaction():
    context.run_migrations()
