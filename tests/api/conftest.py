"""In-process apps for the API tests: a real checkpoint, a fresh state folder, the lifespan running."""

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import httpx
import pytest

from tests.asgi import Serve, answered, serving, settings_from
from tests.images import encode
from tests.server import fresh_deployment
from training.data import Mnist


@pytest.fixture
def serve(tmp_path: Path, small_checkpoint: Path) -> Serve:
    """`async with serve(MAX_BATCH_SIZE="1") as client:` a fresh deployment of the small checkpoint,
    with these MNIST_* settings changed."""

    def start(
        checkpoint: Path = small_checkpoint, **env: str
    ) -> AbstractAsyncContextManager[httpx.AsyncClient]:
        deployment = fresh_deployment(tmp_path, checkpoint)
        return serving(settings_from({**deployment, **{f"MNIST_{key}": value for key, value in env.items()}}))

    return start


@pytest.fixture
async def api(serve: Serve) -> AsyncIterator[httpx.AsyncClient]:
    """The small checkpoint served with the default settings: with a model and room in its queue,
    whatever a test sends, the app must not have answered any 5xx by the end of it."""
    async with serve() as client:
        yield client
        assert not await answered(client, "5")


@pytest.fixture(scope="session")
def digit(mnist: Mnist) -> bytes:
    return encode(mnist.test_images[0])
