"""The checkpoint format: a plain state_dict in `mnist_cnn.pt`, metadata in `mnist_cnn.json`.

Both files are written atomically (temporary file in the same folder, fsync, rename), so a reader
sees the old file or the new one, never half of one. Loads use `weights_only=True` and build the
model fresh, so a bad file is refused whole instead of leaving a half-loaded model behind.
"""

import hashlib
import io
import json
import math
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.cnn import ARCHITECTURES, build_model
from models.signature import SIGNATURE

VERSION_LENGTH = 12


class CheckpointError(Exception):
    """A checkpoint that is missing, unreadable, or does not fit any known network."""


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A model ready for inference and what is known about it."""

    model: nn.Module
    metadata: dict[str, Any]

    @property
    def version(self) -> str:
        return str(self.metadata["version"])

    @property
    def arch(self) -> str:
        return str(self.metadata["arch"])

    @property
    def calibration(self) -> dict[str, Any]:
        """The card's calibration block (empty where training recorded none)."""
        return self.metadata.get("calibration") or {}

    @property
    def temperature(self) -> float:
        """What its log-softmax is divided by for calibrated probabilities (models/calibration.py):
        1.0, the network's own, where training fitted none."""
        return float(self.calibration.get("temperature", 1.0))

    @property
    def not_a_digit_threshold(self) -> float | None:
        """Above which its ood_score flags an image as not a digit (models/not_a_digit.py): None
        where training recorded none (a file the tutorial's own script made, adopted as it is, or
        one trained before models had one)."""
        block = self.metadata.get("not_a_digit") or {}
        threshold = block.get("threshold")
        return None if threshold is None else float(threshold)


def metadata_path(weights_path: str | os.PathLike[str]) -> Path:
    """`mnist_cnn.pt` -> `mnist_cnn.json`, beside it."""
    return Path(weights_path).with_suffix(".json")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` to `path` so that readers see the old content or the new, never a mix."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (not supported on every platform)."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def state_dict_bytes(model: nn.Module) -> bytes:
    """The model's state_dict on the CPU, serialised exactly as `torch.save` writes it."""
    state = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def non_finite(state: dict[str, torch.Tensor]) -> list[str]:
    """The names of the tensors holding NaN or infinity: a diverged model answers NaN for every
    image, so it is never written, kept or served."""
    return [name for name, tensor in state.items() if not bool(torch.isfinite(tensor).all())]


def refuse_non_finite(state: dict[str, torch.Tensor], what: str) -> None:
    if bad := non_finite(state):
        shown = ", ".join(bad[:4]) + (f" and {len(bad) - 4} more" if len(bad) > 4 else "")
        raise CheckpointError(
            f"{what} holds weights that are not finite numbers (NaN or infinity) in {shown}: "
            "the training that made it diverged"
        )


def save_checkpoint(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    arch: str,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write weights and metadata atomically; return the metadata written."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}")
    refuse_non_finite(model.state_dict(), "the model")
    weights = state_dict_bytes(model)
    digest = sha256_bytes(weights)
    metadata: dict[str, Any] = {
        "arch": arch,
        "version": digest[:VERSION_LENGTH],
        "sha256": digest,
        "normalize": SIGNATURE.input.normalization(),
        "torch_version": torch.__version__,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **(extra or {}),
    }
    atomic_write_bytes(path, weights)
    atomic_write_bytes(metadata_path(path), (json.dumps(metadata, indent=2) + "\n").encode())
    return metadata


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The metadata beside a checkpoint, or None when it is absent or unreadable."""
    try:
        data = json.loads(metadata_path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def infer_arch(state: dict[str, Any]) -> str:
    """Which known network has exactly these parameter names and shapes."""
    for name, cls in ARCHITECTURES.items():
        expected = {key: tuple(value.shape) for key, value in cls().state_dict().items()}
        found = {key: tuple(getattr(value, "shape", ())) for key, value in state.items()}
        if expected == found:
            return name
    raise CheckpointError(
        "the weights match no known architecture "
        f"({', '.join(sorted(ARCHITECTURES))}): wrong parameter names or shapes"
    )


def misfit(state: dict[str, Any], arch: str, weights_path: Path) -> str:
    """Why weights do not load into the network their metadata names: another known network's
    (the metadata was edited, or belongs to other weights), or none at all."""
    try:
        actual = infer_arch(state)
    except CheckpointError:
        return f"{weights_path.name} does not fit architecture {arch!r}: wrong parameter names or shapes"
    return (
        f"{metadata_path(weights_path).name} says arch {arch!r}, but {weights_path.name} holds the "
        f"weights of {actual!r}"
    )


def load_checkpoint(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Load a checkpoint into a fresh model in eval mode, or raise CheckpointError saying why."""
    weights_path = Path(path)
    try:
        raw = weights_path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint file {weights_path.name}") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read {weights_path.name}: {exc.strerror}") from None
    if not raw:
        raise CheckpointError(f"{weights_path.name} is empty")
    try:
        state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception:  # torch raises many types for corrupt or truncated archives
        raise CheckpointError(
            f"{weights_path.name} is corrupt or truncated (not a readable PyTorch state_dict)"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{weights_path.name} does not hold a state_dict of tensors")
    refuse_non_finite(state, weights_path.name)

    digest = sha256_bytes(raw)
    metadata = read_metadata(weights_path)
    if metadata is None or metadata.get("sha256") != digest:
        # No metadata (the tutorial's own file) or metadata of another file: trust only the weights.
        metadata = {"arch": infer_arch(state), "metadata_missing": True}
    arch = str(metadata.get("arch"))
    if arch not in ARCHITECTURES:
        raise CheckpointError(f"{metadata_path(weights_path).name} names unknown arch {arch!r}")

    model = build_model(arch)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError:
        raise CheckpointError(misfit(state, arch, weights_path)) from None
    metadata = {**metadata, "sha256": digest, "version": digest[:VERSION_LENGTH]}
    loaded = LoadedCheckpoint(model=model.to(device).eval(), metadata=metadata)
    try:
        fitted = math.isfinite(loaded.temperature) and loaded.temperature > 0
    except (TypeError, ValueError, AttributeError):
        fitted = False
    if not fitted:
        raise CheckpointError(
            f"{metadata_path(weights_path).name} names a temperature that is not a positive number"
        )
    try:
        threshold = loaded.not_a_digit_threshold
        usable = threshold is None or 0.0 <= threshold <= 1.0
    except (TypeError, ValueError, AttributeError):
        usable = False
    if not usable:
        raise CheckpointError(
            f"{metadata_path(weights_path).name} names a not-a-digit threshold that is not a number "
            "from 0 to 1"
        )
    return loaded
