"""Learning from corrections, end to end over real HTTP: digits photographed on ruled paper (built
from MNIST's training digits) are sent as corrections, a job trains on them and is promoted, and the
served model then reads ruled-paper digits built from MNIST's test digits far better, its MNIST test
accuracy unharmed; a job taught by corrections that are all mislabelled is refused by the gate."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from models.checkpoint import read_metadata
from tests.images import encode
from tests.jobs import finished, polled_job
from tests.server import ServerProcess, fresh_deployment
from tests.styles import ruled_paper
from training.data import Mnist

pytestmark = pytest.mark.slow  # a model of the accurate recipe, and a job of each recipe

TOKEN = {"Authorization": "Bearer s3cret"}
CORRECTIONS = 300  # "a few hundred"
STYLE_TESTS = 500
# The gain on held-out digits of the style the issue asks for, in points, and how far MNIST may move.
GAIN = 20.0
MNIST_TOLERANCE = 0.25


@contextmanager
def serving(tmp_path: Path, checkpoint: Path) -> Iterator[httpx.Client]:
    """A model served with a token; jobs train on two threads, as a laptop would."""
    env = fresh_deployment(tmp_path, checkpoint)
    env.update(MNIST_TRAIN_TOKEN="s3cret", MNIST_TRAIN_THREADS="2", MNIST_DEVICE="cpu")
    with ServerProcess(env, ready_path="/readyz") as running:
        yield httpx.Client(base_url=running.url, timeout=60)


@pytest.fixture
def server(tmp_path: Path, accurate_checkpoint: Path) -> Iterator[httpx.Client]:
    with serving(tmp_path, accurate_checkpoint) as client:
        yield client


@pytest.fixture
def tutorial_server(tmp_path: Path, trained_checkpoint: Path) -> Iterator[httpx.Client]:
    with serving(tmp_path, trained_checkpoint) as client:
        yield client


def ruled(images: list[torch.Tensor], seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [encode(ruled_paper(image, rng)) for image in images]


def accuracy(client: httpx.Client, images: list[bytes], labels: list[int]) -> tuple[float, set[str]]:
    """Percent right over /predict/batch, and the versions that answered."""
    digits, versions = [], set()
    for start in range(0, len(images), 64):
        files = [("files", (f"{i}.png", image)) for i, image in enumerate(images[start : start + 64])]
        answer = client.post("/predict/batch", files=files).json()
        digits += [prediction["digit"] for prediction in answer["predictions"]]
        versions.add(answer["model_version"])
    return 100.0 * float(np.mean(np.array(digits) == np.array(labels))), versions


def send(client: httpx.Client, images: list[bytes], labels: list[int]) -> None:
    for image, label in zip(images, labels, strict=True):
        response = client.post(
            "/feedback", headers=TOKEN, files={"file": ("photo.png", image)}, data={"label": str(label)}
        )
        assert response.status_code == 201, response.text  # a token holder is never throttled


def trained_with_feedback(client: httpx.Client, recipe: str, **values: object) -> dict[str, object]:
    body = {"use_feedback": True, "recipe": recipe, **values}
    started = client.post("/train", headers=TOKEN, json=body)
    assert started.status_code == 202, started.text
    return polled_job(client, started.json()["id"], finished, timeout_s=900)


def test_corrections_of_a_style_teach_the_served_model(
    server: httpx.Client, mnist: Mnist, accurate_checkpoint: Path
) -> None:
    rng = np.random.default_rng(31)
    teach = rng.choice(len(mnist.train_images), CORRECTIONS, replace=False)
    judge = range(STYLE_TESTS)  # test digits: never seen by a correction
    test_images = ruled([mnist.test_images[i] for i in judge], seed=2)
    test_labels = [int(mnist.test_labels[i]) for i in judge]
    before, versions = accuracy(server, test_images, test_labels)
    first = versions.pop()

    send(
        server,
        ruled([mnist.train_images[i] for i in teach], seed=1),
        [int(mnist.train_labels[i]) for i in teach],
    )
    counts = server.get("/feedback", params={"limit": 0}).json()["counts"]
    assert counts["by_status"]["accepted"] == CORRECTIONS
    without = read_metadata(accurate_checkpoint)  # the same recipe and seed, trained without corrections
    assert without is not None
    job = trained_with_feedback(server, "accurate", epochs=without["hyperparameters"]["epochs"])
    assert job["status"] == "succeeded", job
    promotion = job["promotion"]
    assert promotion["promoted"], promotion
    assert (
        "held-out feedback accuracy" in promotion["reason"] and "MNIST test accuracy" in promotion["reason"]
    )
    # Like with like: the active model was measured on the same frozen held-out corrections.
    challenger, champion = promotion["challenger"], promotion["champion"]
    assert champion["model_version"] == first and champion["feedback_sha256"] == challenger["feedback_sha256"]
    assert challenger["feedback_accuracy"] > champion["feedback_accuracy"]

    after, versions = accuracy(server, test_images, test_labels)
    assert versions == {job["model_version"]}
    assert after >= before + GAIN, (before, after)
    served = server.get("/model").json()
    assert abs(served["test_accuracy"] - without["test_accuracy"]) <= MNIST_TOLERANCE
    # The card names the frozen dataset version, and it is the export's.
    exported = server.get("/feedback/export")
    frozen = served["data"]["feedback"]
    assert f"feedback-{frozen['sha256'][:12]}.zip" in exported.headers["content-disposition"]
    assert frozen["counts"] == counts["accepted_by_split"]
    assert served["feedback_heldout"]["count"] == counts["accepted_by_split"]["heldout"]


def test_a_job_taught_by_mislabelled_corrections_is_refused(
    tutorial_server: httpx.Client, mnist: Mnist
) -> None:
    server = tutorial_server
    rng = np.random.default_rng(32)
    teach = rng.choice(len(mnist.train_images), CORRECTIONS, replace=False)
    wrong = [(int(mnist.train_labels[i]) + int(rng.integers(1, 10))) % 10 for i in teach]  # never the truth
    send(server, ruled([mnist.train_images[i] for i in teach], seed=3), wrong)
    active = server.get("/model").json()["model_version"]
    job = trained_with_feedback(server, "tutorial")
    assert job["status"] == "rejected", job
    # Refused by the held-out corrections (as wrong as the rest), not by MNIST: worse there, or no
    # better than chance, as wrong labels drawn at random cannot be learned.
    assert not job["promotion"]["promoted"] and "on the held-out feedback" in job["promotion"]["reason"]
    assert server.get("/model").json()["model_version"] == active
