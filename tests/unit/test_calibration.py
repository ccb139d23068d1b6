"""Temperature scaling and the expected calibration error: the maths the card and the answers use."""

import math

import pytest
import torch

from models.calibration import (
    ECE_BINS,
    calibrated,
    expected_calibration_error,
    fit_temperature,
    reliability,
)


def drawn(temperature: float, n: int = 20000) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels drawn from softmax(logits / temperature): a network whose log-softmax is
    calibrated at exactly that temperature."""
    generator = torch.Generator().manual_seed(7)
    logits = torch.randn(n, 10, generator=generator) * 4
    labels = torch.multinomial(torch.softmax(logits / temperature, dim=1), 1, generator=generator).squeeze(1)
    return torch.log_softmax(logits, dim=1), labels


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.5])
def test_the_fitted_temperature_is_the_one_the_labels_were_drawn_at(temperature: float) -> None:
    log_probs, labels = drawn(temperature)
    assert fit_temperature(log_probs, labels) == pytest.approx(temperature, rel=0.05)


def test_calibration_removes_the_error_a_wrong_temperature_makes() -> None:
    log_probs, labels = drawn(2.5)
    right = log_probs.argmax(dim=1) == labels
    before = expected_calibration_error(reliability(log_probs.max(dim=1).values.exp(), right))
    fitted = calibrated(log_probs, fit_temperature(log_probs, labels))
    after = expected_calibration_error(reliability(fitted.max(dim=1).values.exp(), right))
    assert before > 10 and after < 1.5
    assert torch.equal(fitted.argmax(dim=1), log_probs.argmax(dim=1))  # the digit never changes
    assert torch.allclose(fitted.exp().sum(dim=1), torch.ones(len(fitted)), atol=1e-5)


def test_the_network_s_own_temperature_changes_nothing() -> None:
    log_probs, _ = drawn(1.0, n=10)
    assert calibrated(log_probs, 1.0) is log_probs


def test_reliability_bins_are_guo_s_fifteen_equal_widths() -> None:
    confidence = torch.tensor([0.0, 1 / 15, 1 / 15 + 1e-6, 0.5, 0.95, 1.0, 1.0], dtype=torch.float64)
    correct = torch.tensor([False, True, True, False, True, True, False])
    rows = reliability(confidence, correct)
    assert len(rows) == ECE_BINS and rows[0]["low"] == 0 and rows[-1]["high"] == 1
    assert [row["count"] for row in rows] == [2, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 3]
    assert rows[0]["accuracy"] == 0.5 and rows[2]["confidence"] is None
    assert rows[-1]["accuracy"] == pytest.approx(2 / 3) and rows[-1]["confidence"] == pytest.approx(0.9833333)
    # |conf - acc| weighted by each bin's share of the 7 predictions.
    gaps = 2 * abs(1 / 30 - 0.5) + abs(1 / 15 + 1e-6 - 1) + abs(0.5 - 0) + 3 * abs(2.95 / 3 - 2 / 3)
    assert expected_calibration_error(rows) == pytest.approx(100 * gaps / 7, abs=1e-3)


def test_a_calibrated_table_has_no_error_and_an_empty_one_none() -> None:
    confidence = torch.full((10,), 0.8)
    correct = torch.tensor([True] * 8 + [False] * 2)
    assert expected_calibration_error(reliability(confidence, correct)) == pytest.approx(0.0, abs=1e-9)
    assert expected_calibration_error(reliability(torch.empty(0), torch.empty(0, dtype=torch.bool))) == 0.0
    assert math.isclose(sum(row["count"] for row in reliability(confidence, correct)), 10)
