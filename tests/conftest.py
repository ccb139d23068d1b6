"""Shared fixtures: the real MNIST files and a real (quickly trained) checkpoint."""

import os
from pathlib import Path

import pytest
import torch

from training.data import Mnist, load_mnist
from training.loop import TrainConfig, run

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """$MNIST_DATA_DIR, else the offline copy beside the repository."""
    path = Path(os.environ.get("MNIST_DATA_DIR") or REPO.parent / "shared" / "mnist")
    if not (path / "t10k-images-idx3-ubyte.gz").exists() and not (path / "t10k-images-idx3-ubyte").exists():
        pytest.fail(f"MNIST not found at {path}: set MNIST_DATA_DIR to the folder with the IDX files")
    return path


@pytest.fixture(scope="session")
def mnist(mnist_dir: Path) -> Mnist:
    return load_mnist(mnist_dir, download=False)


@pytest.fixture(scope="session")
def small_checkpoint(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> Path:
    """A real checkpoint: the tutorial's Net trained for one epoch on 2,000 images (~90% accurate)."""
    out = tmp_path_factory.mktemp("model") / "mnist_cnn.pt"
    run(TrainConfig(epochs=1, limit_train=2000, device="cpu", data_dir=str(mnist_dir), out=str(out)))
    return out


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> Path:
    """A checkpoint good enough to judge recognition: the tutorial's recipe, one full epoch (~98%)."""
    out = tmp_path_factory.mktemp("trained") / "mnist_cnn.pt"
    run(TrainConfig(epochs=1, device="cpu", data_dir=str(mnist_dir), out=str(out)))
    return out


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`gpu` tests need CUDA; without it they are skipped, saying so."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
