"""The inputs of this process's recent predictions, so that a correction may name a prediction
(`{"prediction_id": ..., "label": ...}`) instead of sending its image again.

Held in this process's memory only, newest last, within a byte budget and an age: the model's own
input tensor is kept (no copy is made on the predict path) and turned back into grey levels only
when a correction asks for it. A prediction answered by another process or replica, or older than
the age, or pushed out by newer ones, is not held: the correction must send the image.
"""

import time
from collections import OrderedDict

import torch

from models.signature import SIGNATURE


class RecentInputs:
    """Request id -> the input tensor of its predictions (row i is prediction `<id>-<i>`)."""

    def __init__(self, budget_bytes: int, keep_s: float) -> None:
        self.budget_bytes, self.keep_s = budget_bytes, keep_s
        self._held: OrderedDict[str, tuple[float, torch.Tensor, int]] = OrderedDict()
        self._bytes = 0

    def keep(self, request: str, inputs: torch.Tensor) -> None:
        """Hold one request's inputs (cheap: a reference), dropping the oldest past the budget."""
        size = inputs.untyped_storage().nbytes()
        if size > self.budget_bytes:
            return
        now = time.monotonic()
        self._held[request] = (now, inputs, size)
        self._bytes += size
        while self._bytes > self.budget_bytes or self._expired(now):
            self._drop_oldest()

    def _expired(self, now: float) -> bool:
        if not self._held:
            return False
        kept_at, _, _ = next(iter(self._held.values()))
        return now - kept_at > self.keep_s

    def _drop_oldest(self) -> None:
        _, (_, _, size) = self._held.popitem(last=False)
        self._bytes -= size

    def image(self, prediction_id: str) -> torch.Tensor | None:
        """The grey levels (height x width, uint8) a prediction was made from, or None if this
        process does not hold them (any more)."""
        request, _, row = prediction_id.rpartition("-")
        held = self._held.get(request)
        if held is None or not (row.isascii() and row.isdigit()) or time.monotonic() - held[0] > self.keep_s:
            return None
        _, inputs, _ = held
        if int(row) >= len(inputs):
            return None
        return SIGNATURE.input.levels(inputs[int(row)]).reshape(SIGNATURE.input.size)
