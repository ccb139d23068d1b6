"""Alembic's entry point: runs the revisions on the connection `Database.migrate` passes in, inside
its (already serialised) transaction."""

from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection)
with context.begin_transaction():
    context.run_migrations()
