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
    """A server default as SQL text, without PostgreSQL's cast of a literal to its column's own
    type (`'{}'::json`) or the brackets SQLite may put around an expression. Quotes stay: a text
    default '0' is not the number 0."""
    if default is None:
        return None
    default = re.sub(r"^('.*')::[\w ]+$", r"\1", default)
    return re.sub(r"^\((.*)\)$", r"\1", default)


def server_default_differs(
    migration: MigrationContext,
    inspected_column: Column[Any],
    metadata_column: Column[Any],
    inspected_default: str | None,
    metadata_default: Any,
    rendered_metadata_default: str | None,
) -> bool:
    """Defaults compared as SQL text, each rendered by the database's own dialect; a text default of
    the code's tables is the quoted literal the database shows. PostgreSQL's built-in comparison asks
    the server whether `'{}'::json = '{}'`, which json has no operator to answer."""
    literal = getattr(metadata_default, "arg", None)
    expected = (
        "'" + literal.replace("'", "''") + "'" if isinstance(literal, str) else rendered_metadata_default
    )
    return plain_default(inspected_default) != plain_default(expected)


connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    compare_type=True,
    compare_server_default=server_default_differs,
)
with context.begin_transaction():
    context.run_migrations()
