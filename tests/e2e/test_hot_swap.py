"""A hot swap under load, over real HTTP: 24 clients, single uploads and batches that the engine
splits into several chunks (MNIST_MAX_BATCH_SIZE=4), while the active version flips back and forth.
No request fails, and every row of every answer is what the model its version names computes."""

import asyncio
from pathlib import Path

import httpx
import torch

from models.checkpoint import load_checkpoint
from tests.images import encode
from tests.server import ServerProcess, two_versions
from tests.tolerances import assert_log_probs_close
from tests.tools import polled_async
from training.data import Mnist
from training.loop import to_model_input

CLIENTS = 24
BATCH_FILES = 10  # three engine batches of at most 4


async def test_every_answer_comes_from_the_model_its_version_names(
    tmp_path: Path, small_checkpoint: Path, trained_checkpoint: Path, mnist: Mnist
) -> None:
    env = {**two_versions(tmp_path, small_checkpoint, trained_checkpoint), "MNIST_MAX_BATCH_SIZE": "4"}
    models = {
        loaded.version: loaded for loaded in map(load_checkpoint, (small_checkpoint, trained_checkpoint))
    }
    images = mnist.test_images[:40]
    with torch.inference_mode():
        x = to_model_input(images, torch.device("cpu"))
        truth = {version: loaded.model(x) for version, loaded in models.items()}
    files = [encode(image) for image in images]
    failures: list[str] = []
    answered: list[str] = []
    stop = asyncio.Event()

    def check(version: str, rows: list[int], log_probs: list[list[float]]) -> None:
        answered.append(version)
        assert_log_probs_close(torch.tensor(log_probs), truth[version][rows])

    async def client(index: int, http: httpx.AsyncClient) -> None:
        turn = 0
        while not stop.is_set():
            turn += 1
            start = (index * 7 + turn) % (len(files) - BATCH_FILES)
            try:
                if index % 2:  # a batch: several chunks, one version for all of them
                    rows = list(range(start, start + BATCH_FILES))
                    parts = [("files", (f"d{row}.png", files[row], "image/png")) for row in rows]
                    response = await http.post("/predict/batch", files=parts)
                    assert response.status_code == 200, response.text
                    body = response.json()
                    assert {p["model_version"] for p in body["predictions"]} == {body["model_version"]}
                    check(body["model_version"], rows, [p["log_probs"] for p in body["predictions"]])
                else:
                    response = await http.post(
                        "/predict", files={"file": ("d.png", files[start], "image/png")}
                    )
                    assert response.status_code == 200, response.text
                    check(response.json()["model_version"], [start], [response.json()["log_probs"]])
            except Exception as exc:
                failures.append(f"client {index}: {exc!r}")

    async def answers_after(count: int) -> None:
        """Let the clients run until `count` answers in all (however slow the machine is today)."""
        await polled_async(
            lambda: len(answered) >= count or bool(failures),
            timeout_s=60,
            every_s=0.05,
            what=f"not {count} answers",
        )

    with ServerProcess(env, ready_path="/readyz") as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
            clients = [asyncio.create_task(client(index, http)) for index in range(CLIENTS)]
            try:
                for version in [*models, *models]:
                    await answers_after(len(answered) + CLIENTS)
                    response = await http.post(f"/model/versions/{version}/activate")
                    assert response.status_code == 200, response.text
                await answers_after(len(answered) + CLIENTS)
            finally:
                stop.set()
                await asyncio.gather(*clients)
    assert not failures, failures[:5]
    assert set(answered) == set(models), "both versions answered"
    assert len(answered) > 4 * CLIENTS
