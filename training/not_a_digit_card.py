"""The not-a-digit block of a model's card: the threshold (chosen on digits held out of training,
where the recipe holds some out) and, for each family of non-digits, the share it flags and the
AUROC against MNIST's test digits, with whether the model was trained on that family.

The card's non-digits are drawn from a seed no training run uses, so even a family the model was
exposed to is measured on images it never saw; kinds outside every family are measured by
`python -m bench.not_a_digit`.
"""

from collections.abc import Callable
from typing import Any

import torch

from models.not_a_digit import auroc, flagged_percent, ood_scores, threshold_flagging
from training import outliers

# Beyond every seed a run may be given (models/hyperparameters.py): never a training pool's.
CARD_SEED = 2**31
KIND_SAMPLES = 500
# Of the held-out digits: with 2,000 of them, so that the test set's share lands under 1%.
FLAG_PERCENT = 0.75
# What chosen_threshold records: the threshold and where it was chosen.
CHOICE_FIELDS = ("threshold", "chosen_on", "chosen_samples", "chosen_flagged_percent")


def chosen_threshold(validation: torch.Tensor | None, test: torch.Tensor) -> dict[str, Any]:
    """The threshold flagging FLAG_PERCENT of the held-out digits (their log-probabilities), or of
    the test digits where none were held out (the test figures then are not a held-out measure)."""
    digits, chosen_on = (
        (validation, "validation") if validation is not None and len(validation) else (test, "test")
    )
    scores = ood_scores(digits)
    threshold = threshold_flagging(scores, FLAG_PERCENT)
    return {
        "threshold": threshold,
        "chosen_on": chosen_on,
        "chosen_samples": len(scores),
        "chosen_flagged_percent": round(flagged_percent(scores, threshold), 2),
    }


def not_a_digit_card(
    choice: dict[str, Any],
    test_log_probs: torch.Tensor,
    test_images: torch.Tensor,
    exposure: dict[str, Any],
    log_probs_of: Callable[[torch.Tensor], torch.Tensor],
) -> dict[str, Any]:
    """The card's block: `choice` (chosen_threshold), the test digits' flagged share, and each
    family's figures (drawn with the test digits for fragments; `log_probs_of` gives the model's
    answers for uint8 images); `exposure` says what the model was trained on (weight, families)."""
    threshold = choice["threshold"]
    digits = ood_scores(test_log_probs)
    kinds = {}
    for family in outliers.FAMILIES:
        images = outliers.inked(outliers.drawn(family, KIND_SAMPLES, CARD_SEED, test_images))
        scores = ood_scores(log_probs_of(images)).cpu()
        kinds[family] = {
            "samples": len(scores),
            "trained_on": family in exposure.get("families", ()),
            "flagged_percent": round(flagged_percent(scores, threshold), 2),
            "auroc": round(auroc(digits.cpu(), scores), 4),
        }
    return {
        "score": "1 - the largest probability, uncalibrated",
        **choice,
        "test_flagged_percent": round(flagged_percent(digits, threshold), 2),
        "outlier_exposure": exposure,
        "kinds": kinds,
    }
