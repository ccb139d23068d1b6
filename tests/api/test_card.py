"""The model card as the API shows it, and the low-confidence flag against what the card states:
all 10,000 MNIST test digits as PNG uploads through /predict/batch, in process."""

from pathlib import Path

import pytest
import torch

from app.config import LOW_CONFIDENCE
from models.card import compare_cards
from models.checkpoint import read_metadata
from tests.asgi import Serve
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


async def test_cards_of_different_shapes_compare_to_nulls() -> None:
    a = {"test_accuracy": 98.0, "per_class_accuracy": [90.0] * 10, "confusion_matrix": None}
    b = {"test_accuracy": "n/a", "per_class_accuracy": [91.0] * 9, "confusion_matrix": [[1] * 10] * 10}
    assert compare_cards(a, b) == {
        "test_accuracy": None,
        "test_loss": None,
        "per_class_accuracy": None,
        "confusion_matrix": None,
    }
    assert compare_cards(a, {**a, "test_accuracy": 98.5})["test_accuracy"] == 0.5
