"""Calibrated confidence: a probability of 0.9 should be right 9 times in 10.

Temperature scaling (Guo et al., 2017): one number T, fitted by minimising the negative
log-likelihood on a validation split the model never trained on, divides the network's log-softmax
before it is normalised again (softmax(log_softmax(z) / T) is softmax(z / T): the log-softmax
is the logits shifted by a constant per row). It never changes which digit wins, so accuracy is
what it was. The expected calibration error (ECE, 15 equal-width bins, as Guo et al.) measures
what it leaves.
"""

import math
from typing import Any

import torch
import torch.nn.functional as F

ECE_BINS = 15
# The range searched for T: far beyond what a trained network needs, either way.
TEMPERATURE_RANGE = (0.05, 20.0)


def calibrated(log_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """The log-probabilities at `temperature` (1.0: the network's own)."""
    if temperature == 1.0:
        return log_probs
    return F.log_softmax(log_probs / temperature, dim=-1)


def nll(log_probs: torch.Tensor, labels: torch.Tensor, temperature: float) -> float:
    return float(F.nll_loss(calibrated(log_probs.double(), temperature), labels))


def fit_temperature(log_probs: torch.Tensor, labels: torch.Tensor, steps: int = 80) -> float:
    """The T that minimises the validation NLL: a golden-section search over log T (the NLL is
    convex in 1/T, so it has one minimum), deterministic and to well under a thousandth."""
    low, high = (math.log(value) for value in TEMPERATURE_RANGE)
    ratio = (math.sqrt(5) - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    fa, fb = nll(log_probs, labels, math.exp(a)), nll(log_probs, labels, math.exp(b))
    for _ in range(steps):
        if fa <= fb:
            high, b, fb = b, a, fa
            a = high - ratio * (high - low)
            fa = nll(log_probs, labels, math.exp(a))
        else:
            low, a, fa = a, b, fb
            b = low + ratio * (high - low)
            fb = nll(log_probs, labels, math.exp(b))
    return round(math.exp((low + high) / 2), 4)


def reliability(
    confidence: torch.Tensor, correct: torch.Tensor, bins: int = ECE_BINS
) -> list[dict[str, Any]]:
    """Per equal-width bin of confidence: how many predictions, their mean confidence and the share
    right (None in an empty bin): the reliability diagram's bars."""
    confidence, correct = confidence.double().cpu(), correct.double().cpu()
    # Bin b holds (b/bins, (b+1)/bins]; a confidence of exactly 0 joins the first.
    index = (torch.ceil(confidence * bins).long() - 1).clamp(0, bins - 1)
    rows = []
    for b in range(bins):
        inside = index == b
        count = int(inside.sum())
        rows.append(
            {
                "low": round(b / bins, 4),
                "high": round((b + 1) / bins, 4),
                "count": count,
                "confidence": round(float(confidence[inside].mean()), 6) if count else None,
                "accuracy": round(float(correct[inside].mean()), 6) if count else None,
            }
        )
    return rows


def expected_calibration_error(rows: list[dict[str, Any]]) -> float:
    """ECE in percent from a reliability table: the gap between confidence and accuracy in each
    bin, weighted by its share of the predictions."""
    total = sum(row["count"] for row in rows)
    gap = sum(row["count"] * abs(row["confidence"] - row["accuracy"]) for row in rows if row["count"])
    return round(100.0 * gap / total, 4) if total else 0.0
