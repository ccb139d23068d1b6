"""Model versions: every promoted checkpoint is kept under `<state_dir>/models/<version>.pt`.

Promoting or rolling back copies a version onto the active checkpoint (MNIST_MODEL_PATH) atomically,
weights then metadata; every server process watching that file picks it up (app/watcher.py).
"""

import shutil
from pathlib import Path
from typing import Any

from app.errors import VersionNotFound
from models.checkpoint import atomic_write_bytes, load_checkpoint, metadata_path, read_metadata


def copy_checkpoint(source: Path, target: Path) -> None:
    """Weights, then metadata when there is any, each written atomically."""
    atomic_write_bytes(target, source.read_bytes())
    if metadata_path(source).is_file():
        atomic_write_bytes(metadata_path(target), metadata_path(source).read_bytes())


class ModelVersions:
    """The kept versions, and which one is active."""

    def __init__(self, state_dir: Path, model_path: Path) -> None:
        self.folder = state_dir / "models"
        self.incoming = state_dir / "incoming"
        self.model_path = model_path
        self.folder.mkdir(parents=True, exist_ok=True)
        self.incoming.mkdir(parents=True, exist_ok=True)

    def incoming_path(self, job_id: str) -> Path:
        """Where a job's child process writes its checkpoint before it is judged."""
        return self.incoming / f"{job_id}.pt"

    def keep(self, weights: Path) -> str:
        """Check a new checkpoint loads, file it under its version, and return the version."""
        version = load_checkpoint(weights).version  # refuses a broken file before it goes anywhere
        shutil.move(weights, self.folder / f"{version}.pt")
        shutil.move(metadata_path(weights), metadata_path(self.folder / f"{version}.pt"))
        return version

    def adopt(self, version: str) -> None:
        """Keep a copy of the active checkpoint (one trained outside a job), so it can be rolled back to."""
        kept = self.folder / f"{version}.pt"
        if not kept.exists() and self.model_path.is_file():
            copy_checkpoint(self.model_path, kept)

    def activate(self, version: str) -> None:
        """Make `version` the active checkpoint."""
        weights = self.folder / f"{version}.pt"
        if not version.isalnum() or not weights.is_file():
            raise VersionNotFound(f"no model version {version}")
        copy_checkpoint(weights, self.model_path)

    def discard(self, weights: Path) -> None:
        weights.unlink(missing_ok=True)
        metadata_path(weights).unlink(missing_ok=True)

    def list(self, active: str | None) -> list[dict[str, Any]]:
        """Every kept version's metadata, newest first, marking the active one."""
        found = []
        for weights in self.folder.glob("*.pt"):
            metadata = read_metadata(weights) or {"version": weights.stem}
            found.append({**metadata, "model_version": weights.stem, "active": weights.stem == active})
        return sorted(found, key=lambda m: str(m.get("created_at", "")), reverse=True)
