"""Champion and challenger: whether a finished job's model replaces the active one.

The rule is a registry's (MLflow's champion alias, SageMaker's approval status): the active model
keeps serving until a new one proves itself on the same held-out data, by test accuracy and then,
at equal accuracy, by test loss. Where users' corrections have a held-out split, the real world
comes first: the new model must be at least as accurate there, and may be below the active one on
MNIST's test set by no more than MNIST_PROMOTE_MNIST_TOLERANCE points. Figures measured on other
data are never compared (models/comparison.py): the active model is measured first
(app/jobs/judging.py). A model that is not promoted is kept all the same, so a person can still
activate it.
"""

import math
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from models.comparison import Standing, difference


class PromoteRule(StrEnum):
    """`promote` in a job's body."""

    IF_BETTER = "if_better"  # only if at least as good as the active model (the default)
    ALWAYS = "always"  # whatever the active model is (min_accuracy still applies)
    NEVER = "never"  # keep it as a version; a person activates it, or not


class CannotCompare(Exception):
    """The active model could not be measured on the new model's test data: nothing is promoted."""


class Outcome(StrEnum):
    PROMOTE = "promote"  # the job succeeds and its model serves
    KEEP = "keep"  # the job succeeds; its model is kept, not activated (promote: never)
    REJECT = "reject"  # the job ends rejected; its model is kept, not activated
    MEASURE = "measure"  # first measure the active model on the new model's test data


@dataclass(frozen=True)
class Verdict:
    """What becomes of the new model, and why in words (None for a plain promotion)."""

    outcome: Outcome
    reason: str | None = None


def points(value: float) -> str:
    return f"{value:.2f} point{'' if value == 1 else 's'}"


def judge(
    rule: PromoteRule,
    min_accuracy: float | None,
    challenger: Standing,
    champion: Standing | None,
    mnist_tolerance: float,
) -> Verdict:
    """The rule, given the active model's figures (None: nothing is active). MEASURE when the rule
    must compare the two and the active model's figures are not on the challenger's test data (and
    held-out corrections, where it has them)."""
    accuracy = challenger.test_accuracy
    if min_accuracy is not None and (accuracy is None or accuracy < min_accuracy):
        return Verdict(Outcome.REJECT, f"test accuracy {accuracy}% is below min_accuracy {min_accuracy}%")
    if rule is PromoteRule.NEVER:
        return Verdict(Outcome.KEEP, "promote is never: kept without activating it")
    if rule is PromoteRule.ALWAYS or champion is None:
        return Verdict(Outcome.PROMOTE)
    if not challenger.judged_alike(champion):
        return Verdict(Outcome.MEASURE)
    if challenger.has_feedback_figures:
        return judge_with_feedback(challenger, champion, mnist_tolerance)
    assert accuracy is not None and challenger.test_loss is not None
    assert champion.test_accuracy is not None and champion.test_loss is not None
    theirs = f"the active model's ({champion.model_version})"
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


# A one-sided test at 95%: a model trained on corrections that is no better on the held-out ones
# than chance explains learned nothing that holds beyond the items it saw. Corrections that are
# wrong at random look exactly like that: their held-out labels are as wrong as the rest, and no
# model can learn to predict them.
SIGNIFICANT_Z = 1.645


def gain_z(ours: float, theirs: float, count: int) -> float:
    """The two-proportion z statistic of accuracy `ours` over `theirs` (percent), each measured on
    the same `count` items (pooled; unpaired, so a little conservative)."""
    pooled = (ours + theirs) / 200
    spread = math.sqrt(2 * pooled * (1 - pooled) / count) if count else 0.0
    return (ours - theirs) / 100 / spread if spread else 0.0


def judge_with_feedback(challenger: Standing, champion: Standing, mnist_tolerance: float) -> Verdict:
    """At least as accurate on the held-out corrections (and, trained on the corrections, better than
    chance explains), and on MNIST's test set no more than `mnist_tolerance` points below the active
    model; the reason names both figures either way."""
    ours, theirs = challenger.feedback_accuracy, champion.feedback_accuracy
    mnist, their_mnist = challenger.test_accuracy, champion.test_accuracy
    assert ours is not None and theirs is not None and mnist is not None and their_mnist is not None
    figures = (
        f"held-out feedback accuracy {ours:.2f}% against {theirs:.2f}% for the active model "
        f"({champion.model_version}), MNIST test accuracy {mnist:.2f}% against {their_mnist:.2f}%"
    )
    if ours < theirs:
        return Verdict(Outcome.REJECT, f"{figures}: {points(theirs - ours)} worse on the held-out feedback")
    if challenger.trained_on_feedback:
        z = gain_z(ours, theirs, challenger.feedback_count)
        if z < SIGNIFICANT_Z:
            return Verdict(
                Outcome.REJECT,
                f"{figures}: trained on the corrections, it gains {points(ours - theirs)} on the "
                f"held-out feedback ({challenger.feedback_count} items), no more than chance gives "
                f"(z = {z:.2f}, under {SIGNIFICANT_Z})",
            )
    drop = round(their_mnist - mnist, 6)
    if drop > mnist_tolerance:
        return Verdict(
            Outcome.REJECT,
            f"{figures}: {points(drop)} worse on MNIST's test set, more than "
            f"MNIST_PROMOTE_MNIST_TOLERANCE ({points(mnist_tolerance)})",
        )
    return Verdict(Outcome.PROMOTE, figures)


# What a promotion record compares.
FIGURES = ("test_accuracy", "test_loss")


def record(
    rule: PromoteRule, verdict: Verdict, challenger: dict[str, Any], champion: dict[str, Any] | None
) -> dict[str, Any]:
    """How the job's model was judged, as its record keeps it (from the two models' metadata; the
    champion only where it was comparable)."""
    mine = Standing.of(challenger)
    theirs = Standing.of(champion) if champion is not None else None
    compared = theirs is not None and mine.comparable_with(theirs)
    return {
        "rule": rule.value,
        "promoted": verdict.outcome is Outcome.PROMOTE,
        "reason": verdict.reason,
        "challenger": asdict(mine),
        "champion": asdict(theirs) if compared and theirs is not None else None,
        "difference": difference(challenger, champion, FIGURES) if compared and champion else None,
    }
