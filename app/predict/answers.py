"""A prediction as the API answers it, from one row of the model's log-softmax output, and the id
that names it."""

import logging
import math
import secrets
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from app.predict.not_a_digit import Judged
from app.predict.preprocess import png_data_url
from models.calibration import calibrated
from models.checkpoint import LoadedCheckpoint

log = logging.getLogger(__name__)


def request_id() -> str:
    """A fresh id for one request's predictions: its row `i` is `<id>-<i>` (`prediction_id`). 64
    random bits: unique across any number of processes and replicas without asking anyone."""
    return secrets.token_hex(8)


def prediction_id(request: str, row: int) -> str:
    return f"{request}-{row}"


def logged(request: str, digits: Callable[[], list[int]], version: str) -> None:
    """Each request's prediction ids beside the version that made them (at debug: a line per
    request would cost throughput and fill disks at the default level; the digits are worked out
    only then)."""
    if log.isEnabledFor(logging.DEBUG):
        log.debug("predictions %s-*: digits %s by model version %s", request, digits(), version)


def prediction(
    log_probs: torch.Tensor,
    version: str,
    unsure_below: float,
    named: str,
    image: np.ndarray | None,
    calibrated_log_probs: torch.Tensor | None,
    ood_score: float,
    not_a_digit: bool,
) -> dict[str, Any]:
    """One row of log-softmax output (a value per class; a class's index is its digit) as the API's
    prediction (plain floats: torch ops on a row this short would cost more than the list
    arithmetic). `log_probs` stays the network's own; `probs` and `confidence` are calibrated, and
    `low_confidence` is a confidence below `unsure_below` (MNIST_LOW_CONFIDENCE). No calibrated row:
    the network's own are. `not_a_digit` and its `ood_score` come from app/predict/not_a_digit.py."""
    logs: list[float] = log_probs.tolist()
    shown = logs if calibrated_log_probs is None else calibrated_log_probs.tolist()
    probs = [math.exp(value) for value in shown]
    digit = max(range(len(probs)), key=probs.__getitem__)
    result = {
        "digit": digit,
        "confidence": probs[digit],
        "low_confidence": probs[digit] < unsure_below,
        "not_a_digit": not_a_digit,
        "ood_score": ood_score,
        "log_probs": logs,
        "probs": probs,
        "model_version": version,
        "prediction_id": named,
    }
    if image is not None:
        result["input_image"] = png_data_url(image)
    return result


def answered(
    named: str,
    log_probs: torch.Tensor,
    served: LoadedCheckpoint,
    unsure_below: float,
    images: list[np.ndarray] | None,
    judged: Judged,
) -> list[dict[str, Any]]:
    """One request's predictions (its id `named`, from `request_id`) by the model `served`, a row
    each, named `<request>-<row>` and logged together; with `images` (return_input) each carries
    the image its row was computed from; `judged` says which are not digits."""
    shown = images if images is not None else [None] * len(log_probs)
    version, temperature = served.version, served.temperature
    # At the network's own temperature, each row's figures are computed once.
    calibrated_rows = [None] * len(log_probs) if temperature == 1.0 else calibrated(log_probs, temperature)
    scores, flagged = judged.scores.tolist(), judged.flagged.tolist()
    answers = [
        prediction(
            row, version, unsure_below, prediction_id(named, i), image, calibrated_row, scores[i], flagged[i]
        )
        for i, (row, calibrated_row, image) in enumerate(zip(log_probs, calibrated_rows, shown, strict=True))
    ]
    logged(named, lambda: [answer["digit"] for answer in answers], version)
    return answers
