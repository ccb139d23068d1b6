"""Not a digit, as the service answers it: each image's ood_score (models/not_a_digit.py) against
the threshold in force (MNIST_NOT_A_DIGIT_THRESHOLD, else the answering model's own, chosen when it
was trained), and the 422 that MNIST_REFUSE_NOT_A_DIGIT makes of an image that is flagged."""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NoReturn, Self

import torch

from app.config import Settings
from app.errors import NotADigit
from models.checkpoint import LoadedCheckpoint
from models.not_a_digit import flags, ood_scores


@dataclass(frozen=True)
class Judged:
    """Each row's ood_score and whether it is flagged, and the threshold that flagged them."""

    scores: torch.Tensor
    flagged: torch.Tensor
    threshold: float | None


@dataclass(frozen=True)
class NotADigitPolicy:
    threshold_setting: float | None = None
    refuse: bool = False

    @classmethod
    def of(cls, settings: Settings) -> Self:
        return cls(settings.not_a_digit_threshold, settings.refuse_not_a_digit)

    def threshold(self, served: LoadedCheckpoint) -> float | None:
        """The setting, else the model's own (None for a model trained before it had one: such a
        model flags nothing)."""
        return self.threshold_setting if self.threshold_setting is not None else served.not_a_digit_threshold

    def source(self, served: LoadedCheckpoint) -> str | None:
        if self.threshold_setting is not None:
            return "setting"
        return "model" if served.not_a_digit_threshold is not None else None

    def judged(
        self, log_probs: torch.Tensor, served: LoadedCheckpoint, filenames: Sequence[str | None] | None = None
    ) -> Judged:
        """Each row's score and flag by the model `served`; with refusing on, NotADigit (422) where
        any row is flagged, naming the first: by its upload's `filenames` where a batch of uploads
        has them, else by its row where there are several."""
        scores = ood_scores(log_probs)
        threshold = self.threshold(served)
        judged = Judged(scores, flags(scores, threshold), threshold)
        if self.refuse and bool(judged.flagged.any()):
            self._refuse(judged, filenames)
        return judged

    def _refuse(self, judged: Judged, filenames: Sequence[str | None] | None) -> NoReturn:
        row = int(judged.flagged.nonzero()[0, 0])
        error = NotADigit(
            f"that does not look like a digit: its ood_score {float(judged.scores[row]):.4f} is above "
            f"the threshold {judged.threshold:.4f} (MNIST_REFUSE_NOT_A_DIGIT is on; "
            f"{int(judged.flagged.sum())} of {len(judged.flagged)} images flagged)"
        )
        if filenames is not None:
            raise error.in_file(row, filenames[row])
        raise error.about(f"row {row}") if len(judged.flagged) > 1 else error
