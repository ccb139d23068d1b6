"""The champion/challenger rule: accuracy first, loss at equal accuracy, figures on the same data;
and the job's loss curve, which stays small however long the job."""

import dataclasses
import itertools

import pytest

from app.config import Settings
from app.jobs.progress import MAX_CURVE_POINTS, LossCurve
from app.jobs.promotion import Outcome, PromoteRule, Verdict, gain_z, judge, record
from models.comparison import Standing, difference

# The setting's default, so the figures below are judged as the service judges them.
TOLERANCE = Settings.model_fields["promote_mnist_tolerance"].default

DATA = "c3" * 32


def standing(version: str, accuracy: float | None, loss: float | None, data: str | None = DATA) -> Standing:
    return Standing(version, accuracy, loss, data)


CHAMPION = standing("champion0001", 98.63, 0.0421)


@pytest.mark.parametrize(
    ("accuracy", "loss", "outcome"),
    [
        (98.64, 0.0500, Outcome.PROMOTE),  # more accurate: the loss does not matter
        (98.63, 0.0421, Outcome.PROMOTE),  # as good: promoted
        (98.63, 0.0400, Outcome.PROMOTE),  # equal accuracy, lower loss
        (98.63, 0.0422, Outcome.REJECT),  # equal accuracy, higher loss
        (98.62, 0.0100, Outcome.REJECT),  # less accurate: the loss does not matter
    ],
)
def test_if_better_compares_accuracy_then_loss(accuracy: float, loss: float, outcome: Outcome) -> None:
    verdict = judge(
        PromoteRule.IF_BETTER, None, standing("challenger01", accuracy, loss), CHAMPION, TOLERANCE
    )
    assert verdict.outcome is outcome
    assert (verdict.reason is None) == (outcome is Outcome.PROMOTE)


def test_the_reasons_say_by_how_much() -> None:
    worse = judge(PromoteRule.IF_BETTER, None, standing("challenger01", 72.61, 0.9), CHAMPION, TOLERANCE)
    assert (
        worse.reason == "test accuracy 72.61% is 26.02 points below the active model's (champion0001) 98.63%"
    )
    tied = judge(PromoteRule.IF_BETTER, None, standing("challenger01", 98.63, 0.0452), CHAMPION, TOLERANCE)
    assert tied.reason == (
        "test accuracy 98.63% equals the active model's (champion0001) and its test loss 0.045200 is "
        "0.003100 above that model's 0.042100"
    )
    one = judge(PromoteRule.IF_BETTER, None, standing("challenger01", 97.63, 0.05), CHAMPION, TOLERANCE)
    assert one.reason is not None and "is 1.00 point below" in one.reason


def test_min_accuracy_applies_under_every_rule() -> None:
    challenger = standing("challenger01", 99.0, 0.03)
    for rule in PromoteRule:
        verdict = judge(rule, 99.5, challenger, CHAMPION, TOLERANCE)
        assert verdict.outcome is Outcome.REJECT
        assert verdict.reason == "test accuracy 99.0% is below min_accuracy 99.5%"
    assert judge(PromoteRule.IF_BETTER, 99.0, challenger, CHAMPION, TOLERANCE).outcome is Outcome.PROMOTE


def test_always_never_and_no_champion() -> None:
    worse = standing("challenger01", 10.3, 2.3)
    assert judge(PromoteRule.ALWAYS, None, worse, CHAMPION, TOLERANCE).outcome is Outcome.PROMOTE
    assert (
        judge(PromoteRule.NEVER, None, standing("c", 99.9, 0.01), CHAMPION, TOLERANCE).outcome is Outcome.KEEP
    )
    assert (
        judge(PromoteRule.IF_BETTER, None, worse, None, TOLERANCE).outcome is Outcome.PROMOTE
    )  # nothing active


def metadata(version: str, accuracy: float | None, loss: float | None, data: str | None = DATA) -> dict:
    return {"version": version, "test_accuracy": accuracy, "test_loss": loss, "data": {"test_sha256": data}}


def test_figures_on_other_data_are_not_comparable() -> None:
    challenger = standing("challenger01", 99.0, 0.03)
    assert challenger.comparable_with(CHAMPION)
    other_data = standing("champion0001", 98.63, 0.0421, data="ff" * 32)
    assert challenger.not_comparable_with(other_data) == (
        "models challenger01 and champion0001 were measured on different test data"
    )
    assert not challenger.comparable_with(standing("champion0001", 98.63, 0.0421, data=None))
    assert not challenger.comparable_with(standing("champion0001", None, None))
    assert not standing("c", 99.0, 0.03, data=None).comparable_with(standing("d", 99.0, 0.03, data=None))
    # Not comparable, and the rule compares: the active model is measured on this data first.
    assert judge(PromoteRule.IF_BETTER, None, challenger, other_data, TOLERANCE).outcome is Outcome.MEASURE
    assert judge(PromoteRule.ALWAYS, None, challenger, other_data, TOLERANCE).outcome is Outcome.PROMOTE
    assert judge(PromoteRule.NEVER, None, challenger, other_data, TOLERANCE).outcome is Outcome.KEEP
    assert judge(PromoteRule.IF_BETTER, 99.5, challenger, other_data, TOLERANCE).outcome is Outcome.REJECT
    new, old = metadata("challenger01", 99.0, 0.03), metadata("champion0001", 98.63, 0.0421)
    figures = ("test_accuracy", "test_loss")
    assert difference(new, old, figures) == {"test_accuracy": 0.37, "test_loss": -0.0121}
    assert difference(new, metadata("x", None, None), figures) is None
    assert difference(new, metadata("x", 98.0, 0.04, data="ff" * 32), figures) is None


def test_the_record_shows_the_champion_only_where_compared() -> None:
    new, old = metadata("challenger01", 99.0, 0.03), metadata("champion0001", 98.63, 0.0421)
    kept = record(PromoteRule.ALWAYS, Verdict(Outcome.PROMOTE), new, old)
    assert kept["champion"]["model_version"] == "champion0001" and kept["promoted"]
    assert kept["difference"] == {"test_accuracy": 0.37, "test_loss": -0.0121}
    elsewhere = record(PromoteRule.ALWAYS, Verdict(Outcome.PROMOTE), new, {**old, "data": None})
    assert elsewhere["champion"] is None and elsewhere["difference"] is None
    alone = record(PromoteRule.NEVER, Verdict(Outcome.KEEP, "why"), new, None)
    assert alone == {
        "rule": "never",
        "promoted": False,
        "reason": "why",
        "challenger": {
            "model_version": "challenger01",
            "test_accuracy": 99.0,
            "test_loss": 0.03,
            "test_sha256": DATA,
            "feedback_accuracy": None,
            "feedback_count": 0,
            "feedback_sha256": None,
            "trained_on_feedback": False,
        },
        "champion": None,
        "difference": None,
    }


FEEDBACK = "fb" * 32


def on_feedback(
    standing: Standing, accuracy: float | None, data: str = FEEDBACK, count: int = 61
) -> Standing:
    return dataclasses.replace(
        standing, feedback_accuracy=accuracy, feedback_count=count, feedback_sha256=data
    )


FIELD_CHAMPION = on_feedback(CHAMPION, 60.0)


@pytest.mark.parametrize(
    ("feedback", "accuracy", "tolerance", "outcome", "said"),
    [
        (85.0, 98.40, 0.25, Outcome.PROMOTE, "held-out feedback accuracy 85.00% against 60.00%"),
        (85.0, 98.38, 0.25, Outcome.PROMOTE, "MNIST test accuracy 98.38% against 98.63%"),  # 0.25: within
        (85.0, 98.37, 0.25, Outcome.REJECT, "0.26 points worse on MNIST's test set, more than "),
        (85.0, 98.62, 0.0, Outcome.REJECT, "MNIST_PROMOTE_MNIST_TOLERANCE (0.00 points)"),
        (85.0, 99.50, 5.0, Outcome.PROMOTE, "for the active model (champion0001)"),
        (60.0, 98.63, 0.25, Outcome.PROMOTE, "against 60.00%"),  # as good on both
        (59.99, 99.90, 0.25, Outcome.REJECT, "0.01 points worse on the held-out feedback"),
    ],
)
def test_with_held_out_corrections_the_real_world_comes_first(
    feedback: float, accuracy: float, tolerance: float, outcome: Outcome, said: str
) -> None:
    """Better on MNIST by far does not make up for worse on the corrections; a small loss on MNIST
    is allowed for a gain there. The reason names both figures, promoted or not."""
    challenger = on_feedback(standing("challenger01", accuracy, 0.05), feedback)
    verdict = judge(PromoteRule.IF_BETTER, None, challenger, FIELD_CHAMPION, tolerance)
    assert verdict.outcome is outcome
    assert verdict.reason is not None and said in verdict.reason


@pytest.mark.parametrize(
    ("feedback", "outcome"),
    [
        (60.0, Outcome.REJECT),  # as good: it learned nothing from them
        (74.0, Outcome.REJECT),  # 14 points on 61 items: z = 1.644, within chance
        (75.0, Outcome.PROMOTE),  # z = 1.77
        (85.0, Outcome.PROMOTE),
    ],
)
def test_a_model_trained_on_corrections_must_gain_more_than_chance_on_the_held_out_ones(
    feedback: float, outcome: Outcome
) -> None:
    """Corrections that are wrong at random cannot be learned: the held-out ones (as wrong) come
    out no better than chance allows, and the model is refused. Only measured on them, a model
    that is as good is promoted as before."""
    measured = on_feedback(standing("challenger01", 98.63, 0.0452), feedback)
    taught = dataclasses.replace(measured, trained_on_feedback=True)
    verdict = judge(PromoteRule.IF_BETTER, None, taught, FIELD_CHAMPION, TOLERANCE)
    assert verdict.outcome is outcome
    assert verdict.reason is not None
    assert ("no more than chance gives" in verdict.reason) is (outcome is Outcome.REJECT)
    assert judge(PromoteRule.IF_BETTER, None, measured, FIELD_CHAMPION, TOLERANCE).outcome is Outcome.PROMOTE
    assert 1.62 < gain_z(74.0, 60.0, 61) < 1.645 < gain_z(75.0, 60.0, 61)
    assert gain_z(100.0, 100.0, 61) == gain_z(50.0, 50.0, 0) == 0.0


def test_trained_on_corrections_is_read_from_the_card() -> None:
    taught = {
        "version": "v",
        "data": {"test_sha256": DATA, "feedback": {"counts": {"train": 3, "heldout": 1}}},
    }
    assert Standing.of(taught).trained_on_feedback
    none = {"version": "v", "data": {"test_sha256": DATA, "feedback": {"counts": {"train": 0, "heldout": 1}}}}
    assert not Standing.of(none).trained_on_feedback
    assert not Standing.of({"version": "v", "data": {"test_sha256": DATA}}).trained_on_feedback


def test_the_active_model_is_measured_on_the_same_corrections_first() -> None:
    challenger = on_feedback(standing("challenger01", 99.0, 0.03), 90.0)
    for champion in (CHAMPION, on_feedback(CHAMPION, 60.0, data="ee" * 32), on_feedback(CHAMPION, None)):
        assert judge(PromoteRule.IF_BETTER, None, challenger, champion, TOLERANCE).outcome is Outcome.MEASURE
        assert not challenger.judged_alike(champion) and challenger.comparable_with(champion)
    assert challenger.judged_alike(FIELD_CHAMPION)
    # Corrections with no held-out item judge nothing: MNIST's rule, as before.
    empty = on_feedback(standing("challenger01", 98.60, 0.03), None, count=0)
    assert judge(PromoteRule.IF_BETTER, None, empty, CHAMPION, TOLERANCE).outcome is Outcome.REJECT
    assert Standing.of(
        {"version": "v", "feedback_heldout": {"sha256": FEEDBACK, "count": 61, "accuracy": 90.0}}
    ) == (on_feedback(Standing("v"), 90.0))


def test_standing_of_recorded_metadata() -> None:
    metadata = {"version": "abc", "test_accuracy": 98.0, "test_loss": 0.05, "data": {"test_sha256": DATA}}
    assert Standing.of(metadata) == standing("abc", 98.0, 0.05)
    assert Standing.of({"version": "abc", "arch": "net", "metadata_missing": True}) == standing(
        "abc", None, None, None
    )


@pytest.mark.parametrize("reports", [7, 200, 201, 1000, 9380])
def test_the_loss_curve_stays_small_and_evenly_spread(reports: int) -> None:
    points: list[list[float]] = []
    curve = LossCurve(points)
    for i in range(reports):
        curve.add(i / reports, 2.0 - i / reports)
    assert 0 < len(points) <= MAX_CURVE_POINTS
    assert len(points) == reports or len(points) > MAX_CURVE_POINTS // 2
    fractions = [fraction for fraction, _ in points]
    gaps = [b - a for a, b in itertools.pairwise(fractions)]
    assert fractions[0] == 0 and max(gaps) <= min(gaps) + 1e-3  # the start keeps its points too
    assert fractions[-1] > 1 - 2 * max(gaps, default=1)  # and the curve reaches the end
