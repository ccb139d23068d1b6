"""MNIST from IDX files straight into uint8 tensors, with the checks a corrupt file deserves."""

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from models.idx import IdxError, decode_idx
from models.signature import SIGNATURE

DATA_DIR_ENV = "MNIST_DATA_DIR"
# Which training images a recipe holds out for validation does not depend on its seed, so runs of
# every seed are calibrated and thresholded on the same images.
VALIDATION_SEED = 0
DEFAULT_DATA_DIR = Path("data")
FILES = {
    "train_images": ("train-images-idx3-ubyte", 60000),
    "train_labels": ("train-labels-idx1-ubyte", 60000),
    "test_images": ("t10k-images-idx3-ubyte", 10000),
    "test_labels": ("t10k-labels-idx1-ubyte", 10000),
}


class DataError(Exception):
    """MNIST could not be found, fetched or read."""


@dataclass(frozen=True)
class Mnist:
    """The four MNIST arrays as uint8 tensors: images N x 28 x 28, labels N."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    source: Path


def read_idx(path: Path, ndim: int) -> torch.Tensor:
    """Read one IDX file (plain or .gz) of unsigned bytes with `ndim` dimensions."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    try:
        return decode_idx(raw, ndim)
    except IdxError as exc:
        raise DataError(f"{path}: {exc}") from None


def _find_file(directory: Path, stem: str) -> Path | None:
    for folder in (directory, directory / "MNIST" / "raw"):
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def _has_mnist(directory: Path) -> bool:
    return all(_find_file(directory, stem) for stem, _ in FILES.values())


def _download(root: Path) -> None:
    """torchvision's download, as the tutorial does it; offline this fails quickly."""
    from torchvision import datasets  # only needed on this path

    for train in (True, False):
        try:
            datasets.MNIST(str(root), train=train, download=True)
        except Exception:  # torchvision raises RuntimeError, URLError, OSError...
            raise DataError(
                f"MNIST was not found (looked in --data-dir, ${DATA_DIR_ENV} and ./{DEFAULT_DATA_DIR}) "
                f"and could not be downloaded (no network?): set {DATA_DIR_ENV} to a folder "
                "holding the four IDX files"
            ) from None


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None, download: bool = True) -> Path:
    """First of --data-dir, $MNIST_DATA_DIR, ./data that holds MNIST; else download into one."""
    env_dir = os.environ.get(DATA_DIR_ENV)
    candidates = [Path(d) for d in (data_dir, env_dir) if d] + [DEFAULT_DATA_DIR]
    for candidate in candidates:
        if _has_mnist(candidate):
            return candidate
    if not download:
        looked = ", ".join(str(c) for c in candidates)
        raise DataError(f"MNIST was not found in {looked}: set {DATA_DIR_ENV} to its folder")
    target = candidates[0]
    _download(target)
    return target


def load_mnist(data_dir: str | os.PathLike[str] | None = None, download: bool = True) -> Mnist:
    """All four MNIST arrays, checked for magic numbers, image size and counts."""
    root = resolve_data_dir(data_dir, download)
    arrays: dict[str, torch.Tensor] = {}
    for key, (stem, count) in FILES.items():
        path = _find_file(root, stem)
        assert path is not None  # resolve_data_dir checked
        is_images = key.endswith("images")
        array = read_idx(path, ndim=3 if is_images else 1)
        if array.shape[0] != count:
            raise DataError(f"{path}: {array.shape[0]} items, expected {count}")
        if is_images and tuple(array.shape[1:]) != SIGNATURE.input.size:
            raise DataError(
                f"{path}: images are {tuple(array.shape[1:])}, expected {SIGNATURE.input.size_text}"
            )
        if not is_images and int(array.max()) > 9:
            raise DataError(f"{path}: label {int(array.max())} is not a digit")
        arrays[key] = array
    return Mnist(source=root, **arrays)


def split_validation(
    images: torch.Tensor, labels: torch.Tensor, count: int
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """(training, validation): `count` images drawn by a fixed permutation are held out, and the
    rest keep their order (with none held out, the training set is exactly what it was)."""
    if not count:
        return (images, labels), (images[:0], labels[:0])
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(VALIDATION_SEED))
    kept, held = order[:-count].sort().values, order[-count:].sort().values
    return (images[kept], labels[kept]), (images[held], labels[held])
