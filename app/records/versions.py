"""Model versions: every promoted checkpoint's weights are kept in the model store
(app/records/model_store.py), its metadata recorded in the database (app/records/database.py), and
one version is the active one there, with when and by whom it was activated.

The active version is a database fact: every server process follows it (app/records/follower.py). Activating
(a promotion or a rollback) checks the weights are sound, records it, and also copies them onto
MNIST_MODEL_PATH, so that file keeps holding the active model on one machine. A checkpoint found
at MNIST_MODEL_PATH that the database does not know (the tutorial's file, or one written by hand with
`python -m training`) is adopted: stored, recorded and, by the rules of `adopt`, made active.
"""

import fcntl
import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, select

from app.errors import ModelObjectCorrupt, VersionNotFound
from app.records.database import Database, now_iso
from app.records.model_store import LocalModelStore, ModelStore, S3ModelStore
from app.records.pools import Threads, on_records, on_transfers
from app.records.tables import active_model, model_versions
from models.checkpoint import (
    CheckpointError,
    atomic_write_bytes,
    load_checkpoint,
    metadata_path,
    read_metadata,
    sha256_bytes,
)

log = logging.getLogger("app.records.versions")


def is_recorded(db: Connection, version: str) -> bool:
    return (
        db.execute(select(model_versions.c.version).where(model_versions.c.version == version)).first()
        is not None
    )


def recorded_metadata(db: Connection, version: str) -> dict[str, Any]:
    """A version's recorded metadata, or VersionNotFound."""
    row = db.execute(select(model_versions.c.metadata).where(model_versions.c.version == version)).first()
    if row is None:
        raise VersionNotFound(f"no model version {version}")
    return dict(row.metadata)


def described_sha256(weights: Path) -> tuple[bool, str | None]:
    """Whether the metadata beside `weights` describes them (True where there is none: nothing
    disagrees), and their sha256 where it does (a hash of the file)."""
    metadata = read_metadata(weights)
    if metadata is None:
        return True, None
    try:
        sha256 = sha256_bytes(weights.read_bytes())
    except OSError:
        return False, None
    return (True, sha256) if metadata.get("sha256") == sha256 else (False, None)


def verified_metadata(weights: Path) -> dict[str, Any]:
    """The metadata beside `weights` if its sha256 is theirs (cheap: a hash), else what loading
    them says (the JSON may be stale, e.g. weights replaced before it)."""
    _, sha256 = described_sha256(weights)
    metadata = read_metadata(weights) if sha256 is not None else None
    if metadata and "version" in metadata:
        return metadata
    return load_checkpoint(weights).metadata  # CheckpointError, saying why, if they do not load


def copy_checkpoint(source: Path, target: Path) -> None:
    """Weights, then metadata when there is any, each written atomically."""
    atomic_write_bytes(target, source.read_bytes())
    if metadata_path(source).is_file():
        atomic_write_bytes(metadata_path(target), metadata_path(source).read_bytes())


class Adopt(Enum):
    """When a checkpoint found at MNIST_MODEL_PATH becomes the active version."""

    FIRST = "only when no version is active (a replica joining shared records)"
    NEW = "also when the database did not know it (a new model written there by hand)"
    ALWAYS = "always (one machine: the file it starts with is the model meant to be served)"


class ModelVersions:
    """The kept versions, their records, and which one is active."""

    def __init__(self, database: Database, store: ModelStore, state_dir: Path, model_path: Path) -> None:
        self.database, self.store = database, store
        self.records = database.records
        self.transfers = Threads(4, "models")  # store calls: downloads, uploads, hashing weights
        self.incoming = state_dir / "incoming"  # made by the first checkpoint saved there
        self.model_path = model_path
        self._changing_lock = state_dir / ".active-version.lock"

    def open_store(self) -> None:
        """Create the store's bucket where it has one (S3) and none exists yet: no setup step."""
        if isinstance(self.store, S3ModelStore):
            self.store.create_bucket()

    def model_file(self) -> tuple[bool, str | None]:
        """MNIST_MODEL_PATH's `described_sha256`: whether its metadata describes its weights, and
        their sha256 where it does."""
        return described_sha256(self.model_path)

    def incoming_path(self, job_id: str) -> Path:
        """Where a job's child process writes its checkpoint before it is judged."""
        return self.incoming / f"{job_id}.pt"

    def keep(self, weights: Path) -> str:
        """Check a new checkpoint loads, store and record it, and return its version. Safe to repeat
        (a retry after an outage): the store and the records are keyed by content."""
        checkpoint = load_checkpoint(weights)  # refuses a broken file before it goes anywhere
        self.store.put(weights, checkpoint.metadata)
        self._record(checkpoint.metadata)
        return checkpoint.version

    def record_kept_files(self) -> None:
        """Record the kept files of a local store that have no record yet (a state folder from
        before the database held versions). A file that does not load is logged and left out."""
        if not isinstance(self.store, LocalModelStore):
            return
        recorded = {entry["model_version"] for entry in self.list()}
        for weights in sorted(self.store.folder.glob("*.pt")):
            if weights.stem in recorded:
                continue
            try:
                self._record(verified_metadata(weights))
            except CheckpointError as exc:
                log.warning("kept file %s is not recorded: %s", weights.name, exc)

    def adopt(self, weights: Path, by: str, when: "Adopt") -> str:
        """Store and record the checkpoint at `weights` (CheckpointError if it does not load), make
        it the active version as `when` says, and return its version."""
        with self._changing():  # read under the lock: an activation's copy is never a "new" file
            metadata = verified_metadata(weights)
            self.store.put(weights, metadata)
            new = self._record(metadata)
            version = str(metadata["version"])
            active = self.active()
            if active != version and (active is None or when is Adopt.ALWAYS or (when is Adopt.NEW and new)):
                self._set_active(version, by)
        return version

    def activate(self, version: str, by: str) -> None:
        """Make `version` the active version, after checking its weights in the store are sound
        (ModelObjectCorrupt if not: nobody could serve it), and copy it onto MNIST_MODEL_PATH
        where that can be written."""
        self._activate(version, by, lambda active: True)

    def promote(self, version: str, by: str, replacing: str | None) -> bool:
        """Activate `version` only if `replacing` is still the active version (None: none is), in
        the same transaction; False if another was activated meanwhile (it was judged against a
        model that no longer serves)."""
        return self._activate(version, by, lambda active: active == replacing)

    def _activate(self, version: str, by: str, allowed: Callable[[str | None], bool]) -> bool:
        weights = self.store.local_copy(self.metadata_of(version))
        try:  # the weights match their hash; what is kept beside them must describe them too
            load_checkpoint(weights)
        except CheckpointError as exc:
            raise ModelObjectCorrupt(f"version {version} cannot be served: {exc}") from None
        with self._changing():  # the record and the file change together, or another's copy wins
            if not self._set_active(version, by, allowed):
                return False
            try:
                copy_checkpoint(weights, self.model_path)
            except OSError as exc:  # e.g. a read-only seed volume: the database is what replicas follow
                log.info("version %s is active; not copied onto %s: %s", version, self.model_path, exc)
        return True

    @contextmanager
    def _changing(self) -> Iterator[None]:
        """One change of the active version at a time among the threads and processes sharing this
        state folder: recording it and copying it onto MNIST_MODEL_PATH (which followers adopt
        from) must not interleave with another's. Where no lock file can be made (a full disk),
        the change goes ahead unlocked, as before."""
        try:
            self._changing_lock.parent.mkdir(parents=True, exist_ok=True)
            handle = open(self._changing_lock, "a")  # noqa: SIM115 - closed below
        except OSError as exc:
            log.warning("changing the active version without a lock: %s", exc.strerror or exc)
            yield
            return
        with handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def record_evaluation(self, version: str, figures: dict[str, Any], by: str) -> dict[str, Any]:
        """Add a kept version's test figures and model card, measured after the fact
        (training/evaluate.py), to its record, saying when and why; return the new metadata."""
        with self.database.write() as db:
            metadata = recorded_metadata(db, version)
            known = metadata.get("data")
            known_data = known if isinstance(known, dict) else {}
            metadata.update({key: value for key, value in figures.items() if key != "version"})
            metadata["data"] = {**known_data, **figures["data"]}
            metadata["evaluated"] = {"at": now_iso(), "by": by}
            db.execute(
                model_versions.update()
                .where(model_versions.c.version == version)
                .values(metadata=metadata, test_accuracy=metadata.get("test_accuracy"))
            )
        return metadata

    def metadata_of(self, version: str) -> dict[str, Any]:
        """A kept version's recorded metadata (its model card among it), or VersionNotFound."""
        if not re.fullmatch(r"[0-9a-f]{1,64}", version):  # a digest prefix, or not a version at all
            raise VersionNotFound(f"no model version {version[:64]!r}")
        with self.database.read() as db:
            return recorded_metadata(db, version)

    def local_copy(self, metadata: dict[str, Any]) -> Path:
        """A verified local checkpoint of a recorded version (fetched from the store if need be)."""
        return self.store.local_copy(metadata)

    def close(self) -> None:
        self.transfers.shutdown()

    def discard(self, weights: Path) -> None:
        weights.unlink(missing_ok=True)
        metadata_path(weights).unlink(missing_ok=True)

    def active(self) -> str | None:
        with self.database.read() as db:
            return db.execute(select(active_model.c.version)).scalar()

    def active_metadata(self) -> dict[str, Any] | None:
        """The active version's recorded metadata (version, sha256, arch...), or None."""
        with self.database.read() as db:
            row = db.execute(
                select(model_versions.c.metadata).join(
                    active_model, active_model.c.version == model_versions.c.version
                )
            ).first()
        return dict(row.metadata) if row is not None else None

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

    def _record(self, metadata: dict[str, Any]) -> bool:
        """Record a version; False when it was recorded already."""
        with self.database.write() as db:
            version = str(metadata["version"])
            if is_recorded(db, version):
                return False
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
        return True

    def _set_active(
        self, version: str, by: str, allowed: Callable[[str | None], bool] = lambda active: True
    ) -> bool:
        """Record `version` as active if `allowed` agrees, given the active version now."""
        values = {"version": version, "activated_at": now_iso(), "activated_by": by}
        with self.database.write() as db:
            active = db.execute(select(active_model.c.version)).scalar()
            if not allowed(active):
                return False
            if active is None:
                db.execute(active_model.insert().values(id=1, **values))
            else:
                db.execute(active_model.update().values(**values))
        return True

    # The event loop's way in: store work on the transfers' threads, record work on the records'.
    aopen_store = on_transfers(open_store)
    amodel_file = on_transfers(model_file)
    akeep = on_transfers(keep)
    arecord_kept_files = on_transfers(record_kept_files)
    aadopt = on_transfers(adopt)
    aactivate = on_transfers(activate)
    apromote = on_transfers(promote)
    alocal_copy = on_transfers(local_copy)
    arecord_evaluation = on_records(record_evaluation)
    ametadata_of = on_records(metadata_of)
    aactive_metadata = on_records(active_metadata)
    alist = on_records(list)
