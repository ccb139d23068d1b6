"""The model card: how a model did on the MNIST test set, digit by digit, and what its confidence
tells (the trade-off behind flagging unsure predictions). Built by training from its last
evaluation and kept in the checkpoint's metadata, so `GET /model` and every version show it.
"""

from typing import Any

import torch

from models.signature import SIGNATURE

# Confidence levels below which a prediction could be flagged for a person to check.
CONFIDENCE_LEVELS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


def confusion_matrix(labels: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
    """Counts, classes x classes: row the true digit, column the predicted one."""
    classes = SIGNATURE.output.classes
    counts = torch.zeros(classes, classes, dtype=torch.int64)
    counts.index_put_(
        (labels.cpu(), predicted.cpu()), torch.ones(len(labels), dtype=torch.int64), accumulate=True
    )
    return counts


def low_confidence_table(
    labels: torch.Tensor, predicted: torch.Tensor, confidence: torch.Tensor
) -> list[dict[str, float]]:
    """For each level: the share of all predictions below it, and the share of the wrong ones."""
    wrong = (predicted != labels).cpu()
    confidence = confidence.cpu()
    rows = []
    for level in CONFIDENCE_LEVELS:
        unsure = confidence < level
        caught = int((unsure & wrong).sum())
        rows.append(
            {
                "threshold": level,
                "flagged_percent": round(100.0 * float(unsure.float().mean()), 2),
                "errors_caught_percent": round(100.0 * caught / max(1, int(wrong.sum())), 2),
            }
        )
    return rows


def model_card(labels: torch.Tensor, predicted: torch.Tensor, confidence: torch.Tensor) -> dict[str, Any]:
    """`per_class_accuracy` (percent per true digit), `confusion_matrix` and `low_confidence`
    from a test set's labels, predictions and each prediction's probability."""
    counts = confusion_matrix(labels, predicted)
    per_class = 100.0 * counts.diag().double() / counts.sum(dim=1).clamp(min=1).double()
    return {
        "per_class_accuracy": [round(float(value), 2) for value in per_class],
        "confusion_matrix": counts.tolist(),
        "low_confidence": low_confidence_table(labels, predicted, confidence),
    }


# What a card comparison shows of each model, beside the differences.
CARD_FIELDS = (
    "model_version",
    "arch",
    "created_at",
    "test_accuracy",
    "test_loss",
    "per_class_accuracy",
    "confusion_matrix",
    "history",
    "data",
    "hyperparameters",
    "low_confidence",
    "feedback_heldout",
    "calibration",
    "not_a_digit",
)


def card_of(metadata: dict[str, Any]) -> dict[str, Any]:
    """A version's card from its recorded metadata (None where it was never measured: a
    tutorial-made file adopted as it is)."""
    return {name: metadata.get(name) for name in CARD_FIELDS}
