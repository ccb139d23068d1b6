"""Model files that tests make from a real checkpoint: another version of it, a copy placed where a
server looks, a copy measured on other test data, and corrupt bytes of the same size."""

import json
import shutil
from pathlib import Path

import torch

from models.checkpoint import load_checkpoint, metadata_path, save_checkpoint


def another_version(checkpoint: Path, target: Path) -> Path:
    """A second real checkpoint at `target`: `checkpoint` with one weight changed (so another
    version)."""
    model = load_checkpoint(checkpoint).model
    with torch.no_grad():
        model.fc2.bias[0] += 1.0
    target.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model, target, arch="net", extra={"test_accuracy": 12.5})
    return target


def copied(checkpoint: Path, target: Path) -> Path:
    """`checkpoint`, weights and metadata, copied to `target`."""
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(checkpoint, target)
    shutil.copy(metadata_path(checkpoint), metadata_path(target))
    return target


def measured_elsewhere(checkpoint: Path, target: Path) -> Path:
    """`checkpoint` copied to `target`, its figures recorded as measured on some other test set
    (another test data sha256): a model no other can be compared with."""
    copied(checkpoint, target)
    metadata = json.loads(metadata_path(target).read_text())
    metadata["data"] = {**metadata["data"], "test_sha256": "ff" * 32}
    metadata_path(target).write_text(json.dumps(metadata))
    return target


def flipped(data: bytes) -> bytes:
    """The same bytes with one bit of the middle one changed: corrupt, yet the same size."""
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 1]) + data[middle + 1 :]
