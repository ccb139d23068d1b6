"""One `python -m app` for the reliability tests that only send it requests."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server import ServerProcess


@pytest.fixture(scope="package")
def server(small_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {
        "MNIST_MODEL_PATH": str(small_checkpoint),
        "MNIST_STATE_DIR": str(tmp_path_factory.mktemp("state")),
        "MNIST_WORKERS": "1",
        "MNIST_ROLE": "api",  # accepts and reports jobs, never trains: fuzzing starts no children
        "MNIST_TRAIN_QUEUE": "10000",  # so valid jobs are accepted (202) and wait for ever
    }
    with ServerProcess(env, production=True, ready_path="/readyz") as running:
        yield running
