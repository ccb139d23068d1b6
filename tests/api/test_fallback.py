"""A corrupt checkpoint never leaves a restarted server without a model while a good one is kept:
the active version comes from the version store, and when that is corrupt too, the newest kept
version that loads is served, saying so in /model and the log."""

import logging
import shutil
from pathlib import Path

import httpx
import pytest

from models.checkpoint import metadata_path, read_metadata
from tests.asgi import serving, settings_from
from tests.server import fresh_deployment
from tests.tools import polled_async
from tests.uploads import image_file


def version_of(checkpoint: Path) -> str:
    metadata = read_metadata(checkpoint)
    assert metadata is not None
    return str(metadata["version"])


def corrupt(weights: Path) -> None:
    """Cut the weights in half, as a disk that filled up mid-write would: no longer loadable."""
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])


async def served(client: httpx.AsyncClient, version: str) -> None:
    await polled_async(
        lambda: client.get("/model"),
        lambda model: model.json().get("model_version") == version,
        what=f"{version} not served",
    )


async def test_a_restart_with_a_corrupt_model_file_serves_the_active_version(
    tmp_path: Path, small_checkpoint: Path, digit: bytes
) -> None:
    env = fresh_deployment(tmp_path, small_checkpoint)
    version = version_of(small_checkpoint)
    async with serving(settings_from(env)) as client:
        await served(client, version)  # adopted as the active version, its weights kept
    corrupt(Path(env["MNIST_MODEL_PATH"]))
    async with serving(settings_from(env)) as client:
        assert (await client.get("/readyz")).status_code == 200
        assert (await client.post("/predict", files=image_file(digit))).json()["model_version"] == version
        assert "fallback" not in (await client.get("/model")).json()["serving"]


async def test_a_corrupt_file_written_over_the_served_one_leaves_it_serving(
    tmp_path: Path, small_checkpoint: Path, digit: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    env = fresh_deployment(tmp_path, small_checkpoint)
    version = version_of(small_checkpoint)
    caplog.set_level(logging.WARNING, logger="app")
    async with serving(settings_from(env)) as client:
        await served(client, version)
        corrupt(Path(env["MNIST_MODEL_PATH"]))  # while it serves: the follower sees a new file
        # The follower has looked at the file and refused it.
        await polled_async(lambda: caplog.text, lambda log: "not adopting" in log)
        answer = await client.post("/predict", files=image_file(digit))
        assert (answer.status_code, answer.json()["model_version"]) == (200, version)
        assert (await client.get("/model")).json()["model_version"] == version


async def test_a_corrupt_active_version_falls_back_to_the_newest_that_loads(
    tmp_path: Path,
    small_checkpoint: Path,
    other_checkpoint: Path,
    digit: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    env = fresh_deployment(tmp_path, small_checkpoint)
    model_path = Path(env["MNIST_MODEL_PATH"])
    older, newer = version_of(small_checkpoint), version_of(other_checkpoint)
    async with serving(settings_from(env)) as client:
        await served(client, older)
        shutil.copy(metadata_path(other_checkpoint), metadata_path(model_path))  # written by hand
        shutil.copy(other_checkpoint, model_path)
        await served(client, newer)  # adopted: kept and active
    corrupt(model_path)
    corrupt(tmp_path / "state" / "models" / f"{newer}.pt")  # the kept copy of the active version too
    caplog.set_level(logging.WARNING, logger="app")
    async with serving(settings_from(env)) as client:
        assert (await client.get("/readyz")).status_code == 200
        assert (await client.post("/predict", files=image_file(digit))).json()["model_version"] == older
        model = (await client.get("/model")).json()
        assert model["model_version"] == older
        assert model["serving"]["fallback"].startswith(f"the active version {newer} cannot be served")
        assert str(tmp_path) not in model["serving"]["fallback"]  # no server path reaches a client
        assert f"serving {older}, the newest kept version that loads" in caplog.text
        versions = (await client.get("/model/versions")).json()
        active = {entry["model_version"]: entry["active"] for entry in versions["versions"]}
        assert active == {newer: True, older: False}  # left as it was
