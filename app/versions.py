"""Model versions: every promoted checkpoint is kept as `<state_dir>/models/<version>.pt`, recorded
in the database (app/db.py) with its metadata, and one of them is the active version there, with
when and by whom it was activated.

Activating (a promotion or a rollback) records it and copies the version onto the active checkpoint
(MNIST_MODEL_PATH) atomically, weights then metadata; every server process watching that file picks
it up (app/watcher.py). A checkpoint that appears there by other means (written by hand with
`python -m training`) is adopted: recorded and made active.
"""

import logging
import re
import shutil
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    Column,
    Connection,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    Table,
    Text,
    select,
)

from app.db import Database, now_iso
from app.errors import VersionNotFound
from models.checkpoint import (
    CheckpointError,
    atomic_write_bytes,
    load_checkpoint,
    metadata_path,
    read_metadata,
    sha256_bytes,
)

log = logging.getLogger("app.versions")

tables = MetaData()
model_versions = Table(
    "model_versions",
    tables,
    Column("version", Text, primary_key=True),
    Column("sha256", Text, nullable=False),
    Column("arch", Text, nullable=False),
    Column("test_accuracy", Float),
    Column("metadata", JSON, nullable=False),
    Column("kept_at", Text, nullable=False),
)
active_model = Table(
    "active_model",
    tables,
    Column("id", Integer, primary_key=True),
    Column("version", Text, ForeignKey("model_versions.version"), nullable=False),
    Column("activated_at", Text, nullable=False),
    Column("activated_by", Text, nullable=False),
    CheckConstraint("id = 1", name="one_active_model"),
)


def is_recorded(db: Connection, version: str) -> bool:
    return (
        db.execute(select(model_versions.c.version).where(model_versions.c.version == version)).first()
        is not None
    )


def verified_metadata(weights: Path) -> dict[str, Any]:
    """The metadata beside `weights` if its sha256 is theirs (cheap: a hash), else what loading
    them says (the JSON may be stale, e.g. weights replaced before it)."""
    metadata = read_metadata(weights)
    fresh = metadata and weights.is_file() and metadata.get("sha256") == sha256_bytes(weights.read_bytes())
    if metadata and fresh and "version" in metadata:
        return metadata
    return load_checkpoint(weights).metadata  # CheckpointError, saying why, if they do not load


def copy_checkpoint(source: Path, target: Path) -> None:
    """Weights, then metadata when there is any, each written atomically."""
    atomic_write_bytes(target, source.read_bytes())
    if metadata_path(source).is_file():
        atomic_write_bytes(metadata_path(target), metadata_path(source).read_bytes())


class ModelVersions:
    """The kept versions, their records, and which one is active."""

    def __init__(self, database: Database, state_dir: Path, model_path: Path) -> None:
        self.database = database
        self.folder = state_dir / "models"
        self.incoming = state_dir / "incoming"
        self.model_path = model_path
        self.folder.mkdir(parents=True, exist_ok=True)
        self.incoming.mkdir(parents=True, exist_ok=True)

    def incoming_path(self, job_id: str) -> Path:
        """Where a job's child process writes its checkpoint before it is judged."""
        return self.incoming / f"{job_id}.pt"

    def keep(self, weights: Path) -> str:
        """Check a new checkpoint loads, file and record it under its version, and return the version."""
        checkpoint = load_checkpoint(weights)  # refuses a broken file before it goes anywhere
        shutil.move(weights, self.folder / f"{checkpoint.version}.pt")
        shutil.move(metadata_path(weights), metadata_path(self.folder / f"{checkpoint.version}.pt"))
        self._record(checkpoint.metadata)
        return checkpoint.version

    def record_kept_files(self) -> None:
        """Record the kept files that have no record yet (a state folder from before the database
        held versions). A file that does not load is logged and left out, not fatal."""
        recorded = {entry["model_version"] for entry in self.list()}
        for weights in sorted(self.folder.glob("*.pt")):
            if weights.stem in recorded:
                continue
            try:
                self._record(verified_metadata(weights))
            except CheckpointError as exc:
                log.warning("kept file %s is not recorded: %s", weights.name, exc)

    def adopt(self, version: str, by: str) -> None:
        """The active checkpoint file holds `version` (it was there at startup, or written by hand):
        keep a copy so it can be rolled back to, record it, and make it the active version."""
        kept = self.folder / f"{version}.pt"
        if not kept.exists() and self.model_path.is_file():
            copy_checkpoint(self.model_path, kept)
        metadata = verified_metadata(kept)
        self._record(metadata)
        if self.active() != metadata["version"]:
            self._set_active(str(metadata["version"]), by)

    def activate(self, version: str, by: str) -> None:
        """Make `version` the active version (recorded) and the active checkpoint (copied)."""
        if not re.fullmatch(r"[0-9a-f]{1,64}", version):  # a digest prefix, or not a version at all
            raise VersionNotFound(f"no model version {version!r}")
        weights = self.folder / f"{version}.pt"
        with self.database.read() as db:
            known = is_recorded(db, version)
        if not known or not weights.is_file():
            raise VersionNotFound(f"no model version {version}")
        self._set_active(version, by)
        copy_checkpoint(weights, self.model_path)

    def discard(self, weights: Path) -> None:
        weights.unlink(missing_ok=True)
        metadata_path(weights).unlink(missing_ok=True)

    def active(self) -> str | None:
        with self.database.read() as db:
            return db.execute(select(active_model.c.version)).scalar()

    def list(self) -> list[dict[str, Any]]:
        """Every recorded version's metadata, newest first; the active one says when and by whom
        it was activated."""
        with self.database.read() as db:
            rows = db.execute(select(model_versions)).all()
            active = db.execute(select(active_model)).first()
        found = []
        for row in rows:
            entry = {**row.metadata, "model_version": row.version, "kept_at": row.kept_at}
            entry["active"] = active is not None and active.version == row.version
            if entry["active"] and active is not None:
                entry.update(activated_at=active.activated_at, activated_by=active.activated_by)
            found.append(entry)
        return sorted(found, key=lambda m: (str(m.get("created_at", "")), m["kept_at"]), reverse=True)

    def _record(self, metadata: dict[str, Any]) -> None:
        with self.database.write() as db:
            version = str(metadata["version"])
            if is_recorded(db, version):
                return
            db.execute(
                model_versions.insert().values(
                    version=version,
                    sha256=str(metadata["sha256"]),
                    arch=str(metadata["arch"]),
                    test_accuracy=metadata.get("test_accuracy"),
                    metadata=metadata,
                    kept_at=now_iso(),
                )
            )

    def _set_active(self, version: str, by: str) -> None:
        values = {"version": version, "activated_at": now_iso(), "activated_by": by}
        with self.database.write() as db:
            if db.execute(select(active_model.c.id)).first() is None:
                db.execute(active_model.insert().values(id=1, **values))
            else:
                db.execute(active_model.update().values(**values))
