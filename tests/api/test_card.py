"""The model card as the API shows it, and the low-confidence flag against what the card states:
all 10,000 MNIST test digits as PNG uploads through /predict/batch, in process."""

from pathlib import Path

import pytest
import torch

from app.config import LOW_CONFIDENCE
from models.checkpoint import read_metadata
from models.comparison import difference
from tests.asgi import Serve
from tests.checkpoints import measured_elsewhere
from tests.images import encode
from training.data import Mnist

BATCH = 64


@pytest.mark.slow  # judged on the full-recipe checkpoint, over all 10,000 test digits
async def test_the_flag_catches_the_share_of_errors_the_card_states(
    serve: Serve, trained_checkpoint: Path, mnist: Mnist
) -> None:
    card = read_metadata(trained_checkpoint)
    assert card is not None
    stated = next(row for row in card["low_confidence"] if row["threshold"] == LOW_CONFIDENCE)
    labels = mnist.test_labels.tolist()
    flagged = wrong = caught = 0
    async with serve(trained_checkpoint) as client:
        shown = (await client.get("/model")).json()
        assert shown["confusion_matrix"] == card["confusion_matrix"]
        assert shown["per_class_accuracy"] == card["per_class_accuracy"]
        for start in range(0, len(labels), BATCH):
            files = [
                ("files", (f"{i}.png", encode(mnist.test_images[i]), "image/png"))
                for i in range(start, min(start + BATCH, len(labels)))
            ]
            response = await client.post("/predict/batch", files=files)
            assert response.status_code == 200
            answers = response.json()["predictions"]
            for label, answer in zip(labels[start : start + BATCH], answers, strict=True):
                flagged += answer["low_confidence"]
                wrong += answer["digit"] != label
                caught += answer["low_confidence"] and answer["digit"] != label
    # Served from PNG uploads in batches of 64, the same answers as the card's evaluation, up to
    # float32 rounding at the threshold: a digit or two either way.
    confusion = torch.tensor(card["confusion_matrix"])
    assert abs(wrong - (10000 - int(confusion.diag().sum()))) <= 2
    assert 100 * flagged / 10000 == pytest.approx(stated["flagged_percent"], abs=0.05)
    assert 100 * caught / wrong == pytest.approx(stated["errors_caught_percent"], abs=1.5)
    assert caught / wrong > 0.5  # the default catches most errors while flagging a few percent


async def test_the_threshold_is_the_setting(serve: Serve, small_checkpoint: Path, mnist: Mnist) -> None:
    digits = [("files", (f"{i}.png", encode(mnist.test_images[i]), "image/png")) for i in range(32)]
    for setting, expected in (("0", False), ("1", True)):
        async with serve(small_checkpoint, LOW_CONFIDENCE=setting) as client:
            answers = (await client.post("/predict/batch", files=digits)).json()["predictions"]
            assert {answer["low_confidence"] for answer in answers} == {expected}


def test_cards_of_different_shapes_compare_to_nulls() -> None:
    data = {"test_sha256": "c3" * 32}
    a = {"test_accuracy": 98.0, "test_loss": 0.1, "per_class_accuracy": [90.0] * 10, "data": data}
    b = {"test_accuracy": 97.5, "test_loss": 0.2, "per_class_accuracy": [91.0] * 9, "data": data}
    b["confusion_matrix"] = [[1] * 10] * 10
    assert difference(b, a) == {
        "test_accuracy": -0.5,
        "test_loss": 0.1,
        "per_class_accuracy": None,
        "confusion_matrix": None,
    }


async def test_versions_measured_on_other_test_data_are_not_subtracted(
    serve: Serve, small_checkpoint: Path, other_checkpoint: Path, tmp_path: Path
) -> None:
    elsewhere = measured_elsewhere(other_checkpoint, tmp_path / "elsewhere" / "mnist_cnn.pt")
    async with serve(small_checkpoint) as client:  # the same state folder for both: two versions
        a = (await client.get("/model")).json()["model_version"]
    async with serve(elsewhere) as client:
        b = (await client.get("/model")).json()["model_version"]
        compared = (await client.get(f"/model/versions/{a}/compare/{b}")).json()
        assert compared["difference"] is None
        assert compared["not_comparable"] == f"models {a} and {b} were measured on different test data"
        assert compared["a"]["test_accuracy"] != compared["b"]["test_accuracy"]  # figures, shown apart
        itself = (await client.get(f"/model/versions/{a}/compare/{a}")).json()
        assert itself["not_comparable"] is None and itself["difference"]["test_accuracy"] == 0
