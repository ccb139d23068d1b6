"""Not a digit: a score that tells digits from everything else, and the threshold that flags.

The score is one minus the network's own maximum softmax probability (MSP: Hendrycks & Gimpel,
2017), taken before calibration so that a change of temperature never moves the flag. On its own,
MSP is weak against letters and scribbles: a network trained on digits alone is sure of many of
them. Trained with Outlier Exposure (Hendrycks et al., 2019: each batch of digits beside a batch of
non-digits whose answers are pulled towards uniform), the same score separates them; the recipe
says which networks are (models/hyperparameters.py). The threshold is chosen on digits held out of
training, to flag a small share of them.
"""

import math

import torch


def ood_scores(log_probs: torch.Tensor) -> torch.Tensor:
    """Each row's score, from 0 to 1 - 1/classes: 1 - its largest probability (the network's own,
    uncalibrated)."""
    return 1.0 - log_probs.max(dim=-1).values.exp()


def flags(scores: torch.Tensor, threshold: float | None) -> torch.Tensor:
    """Which scores are not a digit's: above the threshold (none without one), compared in float64
    as a client comparing the answer's numbers would."""
    if threshold is None:
        return torch.zeros(scores.shape, dtype=torch.bool)
    return scores.double() > threshold


def threshold_flagging(digit_scores: torch.Tensor, percent: float) -> float:
    """The lowest threshold that flags at most `percent` of these digits."""
    ranked = digit_scores.double().sort(descending=True).values
    allowed = math.floor(len(ranked) * percent / 100)
    if allowed >= len(ranked):
        return 0.0
    # Flagging is strictly above: the score of the first digit left unflagged lets through it and
    # every lower one, and ties with it.
    return float(ranked[allowed])


def flagged_percent(scores: torch.Tensor, threshold: float | None) -> float:
    return 100.0 * float(flags(scores, threshold).double().mean()) if len(scores) else 0.0


def auroc(digit_scores: torch.Tensor, other_scores: torch.Tensor) -> float:
    """The chance that a random non-digit scores above a random digit (ties count half): 1.0 is a
    perfect separation, 0.5 none. From the ranks (Mann-Whitney U), exact for ties."""
    both = torch.cat([digit_scores, other_scores]).double()
    order = both.argsort()
    ranks = torch.empty_like(both)
    ranks[order] = torch.arange(1, len(both) + 1, dtype=torch.float64)
    # Tied scores share their mean rank.
    values, inverse, counts = torch.unique(both, return_inverse=True, return_counts=True)
    summed = torch.zeros(len(values), dtype=torch.float64).index_add_(0, inverse, ranks)
    ranks = (summed / counts)[inverse]
    n_digits, n_others = len(digit_scores), len(other_scores)
    above = float(ranks[n_digits:].sum()) - n_others * (n_others + 1) / 2
    return above / (n_digits * n_others)
