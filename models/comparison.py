"""Comparing two models: their test figures are subtracted only when both were measured on the very
same test data (its sha256). Promotion asks before it judges (app/jobs/promotion.py), the compare
endpoint before it shows a difference (app/routes/model.py).
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# The figures of a model card that two comparable models' cards are subtracted on.
CARD_FIGURES = ("test_accuracy", "test_loss", "per_class_accuracy", "confusion_matrix")


@dataclass(frozen=True)
class Standing:
    """A model's figures on a test set, and which test set (its data's sha256)."""

    model_version: str
    test_accuracy: float | None = None
    test_loss: float | None = None
    test_sha256: str | None = None
    # On the held-out split of users' corrections (`feedback_heldout`), and which set that was.
    feedback_accuracy: float | None = None
    feedback_count: int = 0
    feedback_sha256: str | None = None
    # Trained on the training split of corrections (`data.feedback`), not only measured on them.
    trained_on_feedback: bool = False

    @classmethod
    def of(cls, metadata: Mapping[str, Any]) -> "Standing":
        """From a version's recorded metadata (or a card: `model_version` for `version`)."""
        data = metadata.get("data")
        feedback = metadata.get("feedback_heldout")
        feedback = feedback if isinstance(feedback, dict) else {}
        taught = data.get("feedback") if isinstance(data, dict) else None
        taught_counts = taught.get("counts") if isinstance(taught, dict) else None
        return cls(
            model_version=str(metadata.get("version", metadata.get("model_version"))),
            test_accuracy=metadata.get("test_accuracy"),
            test_loss=metadata.get("test_loss"),
            test_sha256=data.get("test_sha256") if isinstance(data, dict) else None,
            feedback_accuracy=feedback.get("accuracy"),
            feedback_count=int(feedback.get("count") or 0),
            feedback_sha256=feedback.get("sha256"),
            trained_on_feedback=isinstance(taught_counts, dict) and bool(taught_counts.get("train")),
        )

    @property
    def has_feedback_figures(self) -> bool:
        """Measured on a held-out split of corrections that holds any."""
        return self.feedback_count > 0 and self.feedback_accuracy is not None

    def judged_alike(self, other: "Standing") -> bool:
        """Comparable on MNIST's test set and, where this one was measured on held-out corrections,
        measured on the very same ones: what promotion needs before it judges."""
        if not self.comparable_with(other):
            return False
        return not self.has_feedback_figures or (
            other.has_feedback_figures and other.feedback_sha256 == self.feedback_sha256
        )

    def not_comparable_with(self, other: "Standing") -> str | None:
        """Why the two cannot be compared, in words; None when both were measured on the same data."""
        for standing in (self, other):
            if standing.test_accuracy is None or standing.test_loss is None:
                return f"model {standing.model_version} has no test figures"
            if standing.test_sha256 is None:
                return f"model {standing.model_version} does not record which test data it was measured on"
        if self.test_sha256 != other.test_sha256:
            return (
                f"models {self.model_version} and {other.model_version} were measured on different test data"
            )
        return None

    def comparable_with(self, other: "Standing") -> bool:
        return self.not_comparable_with(other) is None


def is_figure(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def minus(old: Any, new: Any) -> Any:
    """new - old, element by element, rounded to six decimals (no float noise such as 0.37000000000000455);
    None where either lacks a figure or their shapes differ."""
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        differences = [minus(o, n) for o, n in zip(old, new, strict=True)]
        return None if None in differences else differences
    if is_figure(old) and is_figure(new):
        return round(new - old, 6)
    return None


def difference(
    new: Mapping[str, Any], old: Mapping[str, Any], figures: tuple[str, ...] = CARD_FIGURES
) -> dict[str, Any] | None:
    """new minus old for each of `figures` (from metadata or cards), or None when the two were not
    measured on the same test data."""
    if not Standing.of(new).comparable_with(Standing.of(old)):
        return None
    return {name: minus(old.get(name), new.get(name)) for name in figures}
