"""`python -m app.records.copy --to postgresql://...`: carry one machine's history to shared records.

Moving from the single-machine default (SQLite in MNIST_STATE_DIR, weights in `<state>/models/`)
to PostgreSQL and an S3 store starts with empty records; this copies the jobs, the model versions
and the active version across, and with `--to-store s3://bucket/prefix` the kept weights too, so
every version stays servable and can be rolled back to. Rows the target has already are left as
they are: running it twice copies nothing twice. Both databases are migrated to the newest schema
first. Run it with the servers stopped, or at least before the new ones start.
"""

import argparse
import logging
from pathlib import Path
from typing import Any

from sqlalchemy import Table, select

from app.config import LOG_FORMAT, Settings
from app.records.database import Database, database_url
from app.records.model_store import LocalModelStore, S3ModelStore, open_model_store
from app.records.tables import active_model, jobs, model_versions

log = logging.getLogger("app.records.copy")


def missing_rows(source: Database, target: Database, table: Table, key: str) -> list[dict[str, Any]]:
    """The rows of `table` in the source that the target does not have (by `key`)."""
    with source.read() as db:
        rows = [dict(row._mapping) for row in db.execute(select(table))]
    with target.read() as db:
        present = set(db.execute(select(table.c[key])).scalars())
    return [row for row in rows if row[key] not in present]


def insert_rows(target: Database, table: Table, rows: list[dict[str, Any]]) -> int:
    if rows:
        with target.write() as db:
            db.execute(table.insert(), rows)
    return len(rows)


def copy_records(
    state_dir: Path, source_url: str | None, target_url: str, target_store: str | None
) -> dict[str, int]:
    """Copy versions (their weights first, given a target store), jobs and the active version."""
    source = Database(database_url(source_url, state_dir))
    target = Database(database_url(target_url, state_dir))
    try:
        source.migrate()
        target.migrate()
        versions = missing_rows(source, target, model_versions, "version")
        if target_store:
            kept, store = LocalModelStore(state_dir / "models"), open_model_store(target_store, state_dir)
            if isinstance(store, S3ModelStore):
                store.create_bucket()
            for version in versions:  # verified on the way: a damaged kept file stops the copy here
                store.put(kept.local_copy(version["metadata"]), version["metadata"])
        return {
            "versions": insert_rows(target, model_versions, versions),
            "jobs": insert_rows(target, jobs, missing_rows(source, target, jobs, "id")),
            # only where the target has no active version yet
            "active": insert_rows(target, active_model, missing_rows(source, target, active_model, "id")),
        }
    finally:
        source.dispose()
        target.dispose()


def main() -> None:
    settings = Settings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--to", required=True, help="the target database, postgresql://user:password@host/name"
    )
    parser.add_argument("--to-store", help="the target model store, s3://bucket/prefix (AWS_* settings)")
    parser.add_argument(
        "--from", dest="source", help="the source database (default: SQLite in MNIST_STATE_DIR)"
    )
    parser.add_argument("--state-dir", type=Path, default=settings.state_dir, help="the source state folder")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    counts = copy_records(args.state_dir, args.source, args.to, args.to_store)
    print(
        f"copied {counts['jobs']} job(s), {counts['versions']} version(s), {counts['active']} active version"
    )


if __name__ == "__main__":
    main()
