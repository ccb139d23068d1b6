"""The inputs of recent predictions: held by request id within a byte budget (the oldest go first)
and an age, and given back as the grey levels the model saw."""

import time

import torch

from app.predict.recent import RecentInputs
from models.signature import SIGNATURE


def inputs(rows: int, level: int) -> torch.Tensor:
    grey = torch.full((rows, 1, *SIGNATURE.input.size), float(level))
    return SIGNATURE.input.normalize(grey)


def test_the_oldest_go_first_past_the_budget() -> None:
    one = inputs(1, 0).untyped_storage().nbytes()
    recent = RecentInputs(budget_bytes=2 * one, keep_s=600)
    for request, level in (("a", 10), ("b", 20), ("c", 30)):
        recent.keep(request, inputs(1, level))
    assert recent.image("a-0") is None
    held = recent.image("c-0")
    assert held is not None and held.dtype == torch.uint8 and held.shape == SIGNATURE.input.size
    assert int(held.min()) == int(held.max()) == 30
    assert recent.image("b-0") is not None and recent.image("b-1") is None and recent.image("b") is None
    recent.keep("huge", inputs(3, 0))  # over the whole budget: not held, and nothing is pushed out
    assert recent.image("huge-0") is None and recent.image("b-0") is not None


def test_inputs_older_than_the_age_are_gone() -> None:
    recent = RecentInputs(budget_bytes=1 << 20, keep_s=0.5)
    recent.keep("a", inputs(2, 40))
    assert recent.image("a-1") is not None
    deadline = time.monotonic() + 10
    while recent.image("a-1") is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert recent.image("a-1") is None
