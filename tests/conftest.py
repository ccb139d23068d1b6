"""Shared fixtures: the real MNIST files and a real (quickly trained) checkpoint."""

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.postgres import PostgresServer
from tests.s3 import S3Server
from tests.server import REPO
from training.data import Mnist, load_mnist
from training.loop import TrainConfig, bf16_native, run

# The servers and settings a test makes read only what the test gives them: a developer's own
# MNIST_* variables (a token, a database, a port) must not change what the suite checks. Only where
# MNIST lies is kept.
for name in [name for name in os.environ if name.startswith("MNIST_") and name != "MNIST_DATA_DIR"]:
    del os.environ[name]
# Every server a test starts (in this process or as a child) serves no gRPC unless the test gives it
# a port of its own: the default, 8001, would be shared by all of them (SO_REUSEPORT).
os.environ["MNIST_GRPC_PORT"] = "0"
# Training children at normal priority: in the idle CPU class, other test load on a small machine
# can starve them past a test's deadline. The idle class has a test of its own.
os.environ["MNIST_TRAIN_PRIORITY"] = "normal"


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


def trained(folder: Path, mnist_dir: Path, **settings: Any) -> Path:
    """A real checkpoint trained on the CPU with these settings, in `folder`. With
    TEST_CHECKPOINT_CACHE set (`make test-quick` and `make mutation` set it, `make test` does not),
    it is trained once per version of the training and model code and copied from that folder."""
    out = folder / "mnist_cnn.pt"

    def train(to: Path) -> None:
        run(
            TrainConfig.from_recipe(
                **{"device": "cpu", "data_dir": str(mnist_dir), "out": str(to), **settings}
            )
        )

    cache = os.environ.get("TEST_CHECKPOINT_CACHE")
    if not cache:
        train(out)
        return out
    # bf16 steps where this CPU has them: another CPU trains other weights.
    machine = (torch.__version__, bf16_native(torch.device("cpu")))
    key = hashlib.sha256(repr((sorted(settings.items()), machine)).encode())
    for source in sorted([*(REPO / "training").glob("*.py"), *(REPO / "models").glob("*.py")]):
        key.update(source.read_bytes())
    cached = Path(cache) / key.hexdigest()[:16]
    if not cached.exists():
        if os.environ.get("MUTANT_UNDER_TEST"):  # made under a mutant: used once, never kept
            train(out)
            return out
        Path(cache).mkdir(parents=True, exist_ok=True)
        making = Path(tempfile.mkdtemp(dir=cache))
        try:
            train(making / out.name)
            with contextlib.suppress(OSError):  # another session made it first: theirs is the same
                making.rename(cached)
        finally:
            shutil.rmtree(making, ignore_errors=True)
    # Plain paths, not models.checkpoint's helpers: under `make mutation` those are mutated.
    for name in (out.name, out.with_suffix(".json").name):
        shutil.copy(cached / name, folder / name)
    return out


@pytest.fixture(scope="session")
def small_checkpoint(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> Path:
    """A real checkpoint: the default recipe (the tutorial's Net and values, with outlier exposure)
    for one epoch on 2,000 images (76.06% accurate), its temperature and not-a-digit threshold
    chosen on the 2,000 held-out images."""
    return trained(tmp_path_factory.mktemp("model"), mnist_dir, epochs=1, limit_train=2000)


ACCURATE_TEST_EPOCHS = 3


@pytest.fixture(scope="session")
def accurate_checkpoint(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> Path:
    """The accurate recipe (its network, schedule, augmentation, bf16 steps where the CPU has them
    and held-out validation images) for 3 epochs, its one-cycle schedule fitted to them: its full
    15 take minutes, measured in the docs. The schedule anneals the rate to nothing, so MNIST's
    figure is steady from run to run (the tutorial's constant rate leaves the last steps' noise in
    it: an SD of about 0.2 points across seeds)."""
    recipe = TrainConfig.from_recipe("accurate", epochs=ACCURATE_TEST_EPOCHS).hyperparameters()
    return trained(tmp_path_factory.mktemp("accurate"), mnist_dir, **recipe)


@pytest.fixture(scope="session")
def calibrated_checkpoint(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> Path:
    """A quick checkpoint of a recipe that holds training images out: its temperature was fitted
    on them (the accurate recipe with the tutorial's network, one epoch on 2,000 images, so far
    from 1.0)."""
    return trained(
        tmp_path_factory.mktemp("calibrated"),
        mnist_dir,
        recipe="accurate",
        arch="net",
        epochs=1,
        limit_train=2000,
    )


@pytest.fixture(scope="session")
def other_checkpoint(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> Path:
    """A second quick checkpoint with other weights (another seed, 1,000 images): a second version."""
    return trained(tmp_path_factory.mktemp("other"), mnist_dir, epochs=1, limit_train=1000, seed=1)


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> Path:
    """The default model, good enough to judge recognition: the default recipe in full (the
    tutorial's values for 4 epochs, with outlier exposure: 98.95%). A minute or two on a CPU, once per
    session."""
    return trained(tmp_path_factory.mktemp("trained"), mnist_dir)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the session (skipped where none is installed)."""
    server = PostgresServer()
    yield server
    server.remove()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One real S3 server (SeaweedFS) for the session (skipped where none is installed)."""
    server = S3Server()
    yield server
    server.remove()


@pytest.fixture
def s3(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    """The S3 server, with the standard AWS_* variables pointing this process's clients at it."""
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    yield s3_server


@pytest.fixture(params=["sqlite", "postgresql"])
def records_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database of each kind the service supports."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state' / 'jobs.sqlite3'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.new_database()


# Tests that start real server processes (and browsers): `make test-quick` leaves them out.
SLOW_FOLDERS = tuple(REPO / "tests" / name for name in ("e2e", "browser", "reliability", "docs"))
# The standing reliability suite (`make test-reliability` runs it long; `make test`, short).
RELIABILITY_FOLDER = REPO / "tests" / "reliability"


@pytest.hookimpl(tryfirst=True)  # before `-m` selects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark everything in SLOW_FOLDERS `slow` and in tests/reliability `reliability`; skip `gpu`
    tests without CUDA, saying so."""
    skip = None if torch.cuda.is_available() else pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if any(item.path.is_relative_to(folder) for folder in SLOW_FOLDERS):
            item.add_marker(pytest.mark.slow)
        if item.path.is_relative_to(RELIABILITY_FOLDER):
            item.add_marker(pytest.mark.reliability)
        if skip is not None and "gpu" in item.keywords:
            item.add_marker(skip)
    if os.environ.get("MUTANT_UNDER_TEST", "") not in ("", "stats"):
        # mutmut stops at the first failure: the unit tests, which start no app, go first, so most
        # mutants die in a second instead of after the API tests' app startups.
        items.sort(key=lambda item: not item.path.is_relative_to(REPO / "tests" / "unit"))
