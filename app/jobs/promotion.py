"""Champion and challenger: whether a finished job's model replaces the active one.

The rule is a registry's (MLflow's champion alias, SageMaker's approval status): the active model
keeps serving until a new one proves itself on the same held-out data, by test accuracy and then,
at equal accuracy, by test loss. Figures measured on other data are never compared: the runner has
the active model measured first (training/evaluate.py). A model that is not promoted is kept all
the same, so a person can still activate it.
"""

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class PromoteRule(StrEnum):
    """`promote` in a job's body."""

    IF_BETTER = "if_better"  # only if at least as good as the active model (the default)
    ALWAYS = "always"  # whatever the active model is (min_accuracy still applies)
    NEVER = "never"  # keep it as a version; a person activates it, or not


@dataclass(frozen=True)
class Standing:
    """A model's figures on a test set, and which test set (its data's sha256)."""

    version: str
    test_accuracy: float | None
    test_loss: float | None
    test_sha256: str | None

    @classmethod
    def of(cls, metadata: dict[str, Any]) -> "Standing":
        data = metadata.get("data")
        return cls(
            version=str(metadata["version"]),
            test_accuracy=metadata.get("test_accuracy"),
            test_loss=metadata.get("test_loss"),
            test_sha256=data.get("test_sha256") if isinstance(data, dict) else None,
        )

    def comparable_with(self, other: "Standing") -> bool:
        """Both measured, on the very same test data."""
        return (
            None not in (self.test_accuracy, self.test_loss, other.test_accuracy, other.test_loss)
            and self.test_sha256 is not None
            and self.test_sha256 == other.test_sha256
        )

    def public(self) -> dict[str, Any]:
        return {
            "model_version": self.version,
            "test_accuracy": self.test_accuracy,
            "test_loss": self.test_loss,
        }


class CannotCompare(Exception):
    """The active model could not be measured on the new model's test data: nothing is promoted."""


class Outcome(StrEnum):
    PROMOTE = "promote"  # the job succeeds and its model serves
    KEEP = "keep"  # the job succeeds; its model is kept, not activated (promote: never)
    REJECT = "reject"  # the job ends rejected; its model is kept, not activated


@dataclass(frozen=True)
class Verdict:
    """What becomes of the new model, and why in words (None for a plain promotion)."""

    outcome: Outcome
    reason: str | None = None


def points(value: float) -> str:
    return f"{value:.2f} point{'' if value == 1 else 's'}"


def judge(
    rule: PromoteRule, min_accuracy: float | None, challenger: Standing, champion: Standing | None
) -> Verdict:
    """The rule, given the champion's figures on the challenger's test data (None: nothing is
    active, or, for `always` and `never`, not comparable and not needed)."""
    accuracy = challenger.test_accuracy
    if min_accuracy is not None and (accuracy is None or accuracy < min_accuracy):
        return Verdict(Outcome.REJECT, f"test accuracy {accuracy}% is below min_accuracy {min_accuracy}%")
    if rule is PromoteRule.NEVER:
        return Verdict(Outcome.KEEP, "promote is never: kept without activating it")
    if rule is PromoteRule.ALWAYS or champion is None:
        return Verdict(Outcome.PROMOTE)
    assert challenger.comparable_with(champion)  # the caller measured the champion if need be
    assert accuracy is not None and challenger.test_loss is not None
    assert champion.test_accuracy is not None and champion.test_loss is not None
    theirs = f"the active model's ({champion.version})"
    if accuracy < champion.test_accuracy:
        short = champion.test_accuracy - accuracy
        return Verdict(
            Outcome.REJECT,
            f"test accuracy {accuracy:.2f}% is {points(short)} below {theirs} {champion.test_accuracy:.2f}%",
        )
    if accuracy == champion.test_accuracy and challenger.test_loss > champion.test_loss:
        return Verdict(
            Outcome.REJECT,
            f"test accuracy {accuracy:.2f}% equals {theirs} and its test loss {challenger.test_loss:.6f} "
            f"is {challenger.test_loss - champion.test_loss:.6f} above that model's {champion.test_loss:.6f}",
        )
    return Verdict(Outcome.PROMOTE)


def difference(challenger: Standing, champion: Standing | None) -> dict[str, float] | None:
    """The challenger's figures minus the champion's, where they are comparable."""
    if champion is None or not challenger.comparable_with(champion):
        return None
    assert challenger.test_accuracy is not None and champion.test_accuracy is not None
    assert challenger.test_loss is not None and champion.test_loss is not None
    return {
        "test_accuracy": round(challenger.test_accuracy - champion.test_accuracy, 2),
        "test_loss": round(challenger.test_loss - champion.test_loss, 6),
    }
